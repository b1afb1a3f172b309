"""``markctl parse``  [stub, being written]"""


def register(sub):
    p = sub.add_parser("parse", help="parse marking codes")
    p.set_defaults(func=lambda args: 0)
