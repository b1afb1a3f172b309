"""``markctl config``  [stub, being written]"""


def register(sub):
    p = sub.add_parser("config", help="configuration")
    p.set_defaults(func=lambda args: 0)
