"""User-facing output helpers."""

import pytest

from dbexp.console import format_bytes


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (61_400, "60.0 KiB"),
        (7_000_000, "6.7 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (5 * 2**40, "5.0 TiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_format_bytes_uses_binary_units_with_iec_names(size, shown):
    assert format_bytes(size) == shown


def test_export_line_shows_its_size_with_format_bytes(tmp_path):
    from dbexp.export import describe_export

    (tmp_path / "model_index.json").write_bytes(b"x" * 2048)
    assert describe_export(tmp_path) == f"{tmp_path} (full pipeline, 2.0 KiB)"
