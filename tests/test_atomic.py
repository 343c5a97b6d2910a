"""RecBole atomic files: write/read round trips (all four types, nulls), strict one-line errors on bad input."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sibrar.data import atomic
from sibrar.data.atomic import FIELD_TYPES, atomic_path, parse_header, read_atomic, write_atomic
from sibrar.errors import DataError

ALL_TYPES = {"tok": "token", "seq": "token_seq", "num": "float", "vec": "float_seq"}
POLARS_TYPES = {"token": pl.Utf8, "token_seq": pl.List(pl.Utf8), "float": pl.Float64, "float_seq": pl.List(pl.Float64)}


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_atomic(path)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    assert str(path) in message, "errors name the file"
    return message


def _normalise(value: object) -> object:
    """What a value reads back as: empty lists and empty strings are missing."""
    if isinstance(value, list) and not value:
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


# ------------------------------------------------------------------------------------ round trips


def test_round_trip_all_four_types_with_missing_values(tmp_path):
    frame = pl.DataFrame({
        "tok": ["a", None, "c-3", "4"],
        "seq": [["x", "y"], None, ["z"], []],
        "num": [1.0, 2.5, None, -1e-7],
        "vec": [[0.1, 0.2], None, [3.0, -4.25], [1e20, 2.0]],
    }, schema={c: POLARS_TYPES[t] for c, t in ALL_TYPES.items()})
    path = write_atomic(tmp_path / "t.item", frame, ALL_TYPES)
    table = read_atomic(path)
    assert dict(table.types) == ALL_TYPES
    assert table.frame.schema == frame.schema
    expected = {c: [_normalise(v) for v in frame[c].to_list()] for c in frame.columns}
    assert table.frame.to_dict(as_series=False) == expected


def test_header_is_name_colon_type_and_empty_fields_are_blank(tmp_path):
    frame = pl.DataFrame({"tok": ["a", None], "num": [5.0, None], "vec": [[1.0, 2.5], None]})
    path = write_atomic(tmp_path / "t.item", frame, {"tok": "token", "num": "float", "vec": "float_seq"})
    assert path.read_text(encoding="utf-8") == "tok:token\tnum:float\tvec:float_seq\na\t5\t1 2.5\n\t\t\n"


def test_blank_fields_in_a_hand_written_file_read_as_null(tmp_path):
    path = _write_text(tmp_path / "t.item", "tok:token\tseq:token_seq\tnum:float\tvec:float_seq\n\t \t\t\nx\ta b\t1\t2 3\n")
    frame = read_atomic(path).frame
    assert frame.row(0) == (None, None, None, None)
    assert frame.row(1) == ("x", ["a", "b"], 1.0, [2.0, 3.0])


def test_header_only_file_reads_as_empty_frame_with_types(tmp_path):
    path = _write_text(tmp_path / "t.inter", "user_id:token\titem_id:token\trating:float\n")
    table = read_atomic(path)
    assert table.frame.height == 0
    assert table.frame.schema == {"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64}


def test_windows_line_endings_and_blank_lines_are_tolerated(tmp_path):
    path = _write_text(tmp_path / "t.inter", "user_id:token\trating:float\r\nu1\t3\r\n\r\nu2\t4\r\n")
    assert read_atomic(path).frame.to_dict(as_series=False) == {"user_id": ["u1", "u2"], "rating": [3.0, 4.0]}


def test_columns_argument_keeps_and_checks_columns(tmp_path):
    path = _write_text(tmp_path / "t.inter", "user_id:token\titem_id:token\trating:float\nu\ti\t1\n")
    assert read_atomic(path, columns=["rating", "user_id"]).frame.columns == ["rating", "user_id"]
    with pytest.raises(DataError, match=r"missing column\(s\) timestamp"):
        read_atomic(path, columns=["timestamp"])


_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))
_token = st.text(alphabet=_CHARS, min_size=1, max_size=8)  # a token_seq element: no spaces
_spaced = st.text(alphabet=_CHARS | st.just(" "), min_size=1, max_size=12)  # a token may hold spaces
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_VALUES = {
    "token": st.none() | _spaced,
    "token_seq": st.none() | st.lists(_token, max_size=4),
    "float": st.none() | _finite,
    "float_seq": st.none() | st.lists(_finite, max_size=4),
}


@st.composite
def _atomic_frames(draw: st.DrawFn) -> tuple[pl.DataFrame, dict[str, str]]:
    kinds = draw(st.lists(st.sampled_from(FIELD_TYPES), min_size=2, max_size=5))
    n_rows = draw(st.integers(0, 6))
    types = {f"c{i}": kind for i, kind in enumerate(kinds)}
    data = {name: draw(st.lists(_VALUES[kind], min_size=n_rows, max_size=n_rows)) for name, kind in types.items()}
    return pl.DataFrame(data, schema={n: POLARS_TYPES[k] for n, k in types.items()}), types


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_atomic_frames())
def test_round_trip_property_any_types_and_nulls(tmp_path, case):
    frame, types = case
    table = read_atomic(write_atomic(tmp_path / "p.item", frame, types))
    assert dict(table.types) == types
    assert table.frame.height == frame.height
    for name in types:
        got, want = table.frame[name].to_list(), [_normalise(v) for v in frame[name].to_list()]
        assert got == want, name


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_atomic_frames(), crlf=st.booleans())
def test_fast_reader_equals_the_line_by_line_reader(tmp_path, monkeypatch, case, crlf):
    frame, types = case
    path = write_atomic(tmp_path / "p.item", frame, types)
    if crlf:
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    fast = read_atomic(path).frame
    with monkeypatch.context() as mp:
        mp.setattr(atomic, "_read_raw_fast", lambda data, n_fields: None)
        slow = read_atomic(path).frame
    assert fast.equals(slow)


@pytest.mark.parametrize("name", ["ml-100k.inter", "ml-100k.item", "ml-100k.user"])
def test_fast_reader_equals_the_line_by_line_reader_on_ml100k(ml100k_dir, monkeypatch, name):
    assert atomic._read_raw_fast((ml100k_dir / name).read_bytes(), len(read_atomic(ml100k_dir / name).types)) is not None
    fast = read_atomic(ml100k_dir / name).frame
    monkeypatch.setattr(atomic, "_read_raw_fast", lambda data, n_fields: None)
    assert read_atomic(ml100k_dir / name).frame.equals(fast)


def test_real_ml100k_item_file_round_trips(ml100k_dir, tmp_path):
    original = read_atomic(ml100k_dir / "ml-100k.item")
    assert set(original.types.values()) >= {"token", "token_seq", "float"}
    copy = read_atomic(write_atomic(tmp_path / "ml-100k.item", original.frame, original.types))
    assert copy.types == original.types
    assert copy.frame.equals(original.frame)


def test_real_ml100k_inter_file_round_trips_byte_for_byte(ml100k_dir, tmp_path):
    source = ml100k_dir / "ml-100k.inter"
    original = read_atomic(source)
    path = write_atomic(tmp_path / "ml-100k.inter", original.frame, original.types)
    assert path.read_bytes() == source.read_bytes()


def test_atomic_path_names_benchmark_files(tmp_path):
    assert atomic_path(tmp_path, "ml-1m", "train.inter") == tmp_path / "ml-1m.train.inter"


# ----------------------------------------------------------------------------------- bad input


def test_header_field_without_type_is_reported(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "user_id\titem_id:token\nu\ti\n")
    message = _error(path)
    assert ":1:" in message and "'user_id'" in message and "name:type" in message


def test_unknown_type_is_reported_with_accepted_types(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "user_id:token\trating:int\nu\t1\n")
    message = _error(path)
    assert ":1:" in message and "'rating'" in message and "'int'" in message
    assert all(t in message for t in FIELD_TYPES)


def test_duplicate_header_column_is_reported(tmp_path):
    message = _error(_write_text(tmp_path / "bad.inter", "a:token\ta:float\nx\t1\n"))
    assert "'a'" in message and "twice" in message


def test_empty_file_is_reported(tmp_path):
    assert "empty" in _error(_write_text(tmp_path / "bad.inter", ""))


def test_row_with_too_many_fields_names_its_line(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "user_id:token\titem_id:token\nu1\ti1\nu2\ti2\textra\nu3\ti3\n")
    message = _error(path)
    assert f"{path}:3:" in message and "3 fields" in message and "header has 2" in message


def test_row_with_too_few_fields_names_its_line(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "user_id:token\titem_id:token\trating:float\nu1\ti1\t5\nu2\ti2\n")
    message = _error(path)
    assert f"{path}:3:" in message and "2 fields" in message and "header has 3" in message


def test_a_short_and_a_long_row_that_balance_out_are_both_reported(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "a:token\tb:token\tc:token\nx\ty\tz\nx\ty\nx\ty\tz\tw\n")
    message = _error(path)
    assert f"{path}:3:" in message and "2 fields" in message and "2 such row(s)" in message


def test_non_numeric_float_names_line_column_and_value(tmp_path):
    path = _write_text(tmp_path / "bad.inter", "user_id:token\trating:float\nu1\t4\nu2\tfive\n")
    message = _error(path)
    assert f"{path}:3:" in message and "'rating'" in message and "'five'" in message and "number" in message


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_is_refused(tmp_path, value):
    path = _write_text(tmp_path / "bad.inter", f"user_id:token\trating:float\nu1\t{value}\n")
    assert f"'{value}'" in _error(path)


def test_non_numeric_float_seq_element_names_line_and_value(tmp_path):
    path = _write_text(tmp_path / "bad.item", "item_id:token\temb:float_seq\ni1\t1 2\ni2\t0.5 x 3\n")
    message = _error(path)
    assert f"{path}:3:" in message and "'emb'" in message and "'0.5 x 3'" in message


def test_missing_file_is_a_data_error(tmp_path):
    message = _error(tmp_path / "absent.inter")
    assert "no such atomic file" in message


def test_parse_header_gives_types_in_order():
    assert parse_header("a:token\tb:token_seq\tc:float\td:float_seq\n", "x") == {
        "a": "token", "b": "token_seq", "c": "float", "d": "float_seq"}


def test_write_refuses_tab_inside_a_field(tmp_path):
    with pytest.raises(DataError, match="tab or newline"):
        write_atomic(tmp_path / "t.item", pl.DataFrame({"tok": ["a\tb"]}), {"tok": "token"})
    assert not (tmp_path / "t.item").exists()


def test_write_refuses_unknown_type_and_missing_column(tmp_path):
    frame = pl.DataFrame({"tok": ["a"]})
    with pytest.raises(DataError, match="unknown type 'int'"):
        write_atomic(tmp_path / "t.item", frame, {"tok": "int"})
    with pytest.raises(DataError, match="lacks column"):
        write_atomic(tmp_path / "t.item", frame, {"other": "token"})
