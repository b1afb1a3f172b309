"""The kiosk's price list and the ``[sale]`` section: what loads, and how a mistake is named
(file and line) for ``markctl config check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DAIRY, SHOES, TOBACCO_PACK, WATER
from markd import config
from markd.catalog import Catalog, CatalogEntry, Quote, load_catalog, quote
from markd.cli.markctl import main as markctl
from markd.codes import parse
from markd.errors import ConfigError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_sale_catalog_reads_prices_names_and_short_gtins(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.csv",
        "gtin;name;price\n"
        "# a comment, then an empty line\n"
        "\n"
        "04680029460908;Вода питьевая 0,5 л;89,90\n"
        '4670540176099;"Кефир; 1 л";99.9\n'
        "4607809596237;Кроссовки;1 299\n"
        "40123455;Жвачка;25;\n",
        encoding="utf-8-sig",  # a spreadsheet's byte-order mark
    )

    catalog = load_catalog(path)

    assert len(catalog) == 4
    assert catalog.get("04680029460908") == CatalogEntry(
        "04680029460908", "Вода питьевая 0,5 л", 8990, 4
    )
    # GTIN-13 and GTIN-8 lines are found by the code's GTIN-14.
    assert catalog.get(parse(DAIRY).gtin) == CatalogEntry("04670540176099", "Кефир; 1 л", 9990, 5)
    assert catalog.get(parse(SHOES).gtin).price_kopecks == 129900  # type: ignore[union-attr]
    assert catalog.get("00000040123455").price_kopecks == 2500  # type: ignore[union-attr]


def test_sale_catalog_without_a_header_is_read_from_the_first_line(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path / "c.csv", "04680029460908;Вода;10\n"))

    assert catalog.get("04680029460908") is not None


def test_sale_catalog_every_bad_line_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "catalog.csv",
        "gtin;name;price\n"
        "04680029460908;Вода;89,90\n"
        "04680029460907;Вода с опечаткой;10\n"  # wrong check digit
        "12345;Коротко;10\n"
        "4670540176099;;10\n"
        "4670540176099;Кефир;десять\n"
        "4670540176099;Кефир;-5\n"
        "4670540176099;Кефир;1.999\n"
        "4607809596237;Кроссовки\n"
        "04680029460908;Вода ещё раз;90\n"
        f"4607809596237;{'x' * 129};10\n",
    )

    with pytest.raises(ConfigError) as caught:
        load_catalog(path)

    where = str(path)
    assert caught.value.problems == [
        f"{where}:3: gtin: check digit of 04680029460907 is wrong",
        f"{where}:4: gtin: expected 8, 12, 13 or 14 digits, got '12345'",
        f"{where}:5: name: must not be empty",
        f"{where}:6: price: expected roubles such as 89.90 or 89,90, got 'десять'",
        f"{where}:7: price: expected roubles such as 89.90 or 89,90, got '-5'",
        f"{where}:8: price: expected roubles such as 89.90 or 89,90, got '1.999'",
        f"{where}:9: expected 3 fields gtin;name;price, got 2",
        f"{where}:10: GTIN 04680029460908 is already priced on line 2",
        f"{where}:11: name: at most 128 characters (tag 1030)",
    ]


def test_sale_catalog_that_cannot_be_read_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the price list"):
        load_catalog(tmp_path / "missing.csv")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("04680029460908;Вода;1\n".encode("cp1251"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_catalog(latin)


def test_sale_kiosk_prices_from_the_catalog_then_a_tobacco_mrp(tmp_path: Path) -> None:
    catalog = Catalog("c.csv", {"04680029460908": CatalogEntry("04680029460908", "Вода", 8990, 1)})
    water = quote(parse(WATER), catalog, use_mrp=True)
    assert water == Quote("Вода", 8990, "catalog")
    tobacco = quote(parse(TOBACCO_PACK), catalog, use_mrp=True)
    assert tobacco is not None and (tobacco.price_kopecks, tobacco.source) == (22500, "mrp")
    assert quote(parse(DAIRY), catalog, use_mrp=True) is None  # not listed, no MRP
    assert quote(parse(TOBACCO_PACK), catalog, use_mrp=False) is None
    # A listed tobacco GTIN takes the list's price.
    listed = Catalog(
        "c.csv", {"00000046233219": CatalogEntry("00000046233219", "Сигареты", 22500, 1)}
    )
    assert quote(parse(TOBACCO_PACK), listed, use_mrp=True) == Quote("Сигареты", 22500, "catalog")


# --------------------------------------------------------------------------------------------
# [sale] in the configuration


def test_sale_defaults_to_off_without_a_printer() -> None:
    sale = config.default_config().sale

    assert (sale.mode, sale.catalog, sale.use_mrp) == ("off", "", True)


def test_sale_kiosk_needs_a_catalog_or_mrp_prices(tmp_path: Path) -> None:
    main = write(tmp_path / "markd.toml", '[sale]\nmode = "kiosk"\nuse_mrp = false\n')

    with pytest.raises(ConfigError) as caught:
        config.load(main)

    assert caught.value.problems == [
        f"{main}:2: [sale] mode: kiosk needs prices: set [sale] catalog, or use_mrp = true "
        "(tobacco only)"
    ]
    # The catalog may come from a drop-in: only the merged files are judged.
    dropin = tmp_path / "markd.toml.d" / "50-prices.toml"
    dropin.parent.mkdir()
    catalog = write(tmp_path / "catalog.csv", "04680029460908;Вода;89,90\n")
    write(dropin, f'[sale]\ncatalog = "{catalog}"\n')
    assert config.load(main).sale.catalog == str(catalog)


def test_sale_a_bad_catalog_line_is_a_configuration_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write(tmp_path / "catalog.csv", "gtin;name;price\n04680029460908;Вода;дёшево\n")
    main = write(
        tmp_path / "markd.toml",
        f'[sale]\nmode = "kiosk"\ncatalog = "{catalog}"\n\n[scanners.front]\nurl = "virtual://x"\n',
    )

    status = markctl(["config", "check", str(main)])

    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"markctl: {main}:3: [sale] catalog: {catalog}:2: price: expected roubles such as "
        "89.90 or 89,90, got 'дёшево'"
    ]


def test_sale_catalog_path_must_be_absolute(tmp_path: Path) -> None:
    main = write(tmp_path / "markd.toml", '[sale]\ncatalog = "catalog.csv"\n')

    with pytest.raises(ConfigError, match=r"\[sale\] catalog: expected an absolute path"):
        config.load(main)


# --------------------------------------------------------------------------------------------
# One load, one parse


def count_reads(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[Path]:
    """Every read of ``path``'s bytes from now on (the price list is read with read_bytes)."""
    reads: list[Path] = []
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return reads


def test_sale_one_load_reads_the_price_list_once_and_the_desk_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from markd.service.wiring import build_sale_desk

    catalog = write(tmp_path / "catalog.csv", "04680029460908;Вода;89,90\n")
    main = write(
        tmp_path / "markd.toml",
        f'[fiscal]\nurl = "emulator://{tmp_path / "kkt"}"\n'
        f'journal = "{tmp_path / "session.journal"}"\n\n'
        f'[sale]\nmode = "kiosk"\ncatalog = "{catalog}"\n',
    )
    # A drop-in that names the same list again: each file and then their merge are
    # validated, and still the file is read once.
    (tmp_path / "markd.toml.d").mkdir()
    write(tmp_path / "markd.toml.d" / "50-till.toml", f'[sale]\ncatalog = "{catalog}"\n')
    reads = count_reads(monkeypatch, catalog)

    loaded = config.load(main)
    desk = build_sale_desk(loaded, None, None)
    try:
        assert desk.catalog is loaded.sale.parsed_catalog
    finally:
        desk.shutdown()

    assert len(reads) == 1
    assert desk.catalog is not None and len(desk.catalog) == 1


def test_sale_a_section_built_in_code_reads_its_price_list_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    first = write(tmp_path / "first.csv", "04680029460908;Вода;89,90\n")
    second = write(tmp_path / "second.csv", "04680029460908;Вода;91,00\n")
    loaded = config.load(write(tmp_path / "markd.toml", f'[sale]\ncatalog = "{first}"\n'))
    reads = count_reads(monkeypatch, second)

    # The path changed after loading: the list parsed for the old path is not used.
    changed = dataclasses.replace(loaded.sale, catalog=str(second))
    listed = changed.price_list()

    assert listed is not None and listed.get("04680029460908").price_kopecks == 9100  # type: ignore[union-attr]
    assert len(reads) == 1
    assert config.default_config().sale.price_list() is None
