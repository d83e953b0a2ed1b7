from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backends.sim.profiles import load_rows, predict
from tuner.calibration.profile import (
    COLUMNS,
    OPS,
    content_hash,
    from_profile_rows,
    make_profile,
    read_profile,
    shared_profile,
    to_profile_rows,
    write_profile,
)


def _sample() -> pd.DataFrame:
    return make_profile([
        {"source": "calibrate", "device": "h100-sxm", "model": "llama-3.1-8b", "tp": 1, "op": "qkv_proj",
         "tokens": 128, "time_ms": 0.05, "dtype": "bf16", "repeats": 10},
        {"source": "calibrate", "device": "h100-sxm", "model": "llama-3.1-8b", "tp": 1, "op": "attn_decode",
         "batch": 8, "context": 1024.0, "time_ms": 0.02, "dtype": "bf16", "repeats": 10},
        {"source": "live", "device": "h100-sxm", "model": "llama-3.1-8b", "tp": 1, "op": "batch_decode",
         "batch": 32, "context": 1250.0, "time_ms": 21.0},
    ])


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_profile_round_trips(tmp_path, suffix):
    df = _sample()
    p = write_profile(df, tmp_path / f"prof{suffix}")
    back = read_profile(p)
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, df)
    assert content_hash(back) == content_hash(df)


def test_content_hash_changes_with_content():
    df = _sample()
    df2 = df.copy()
    df2.loc[0, "time_ms"] = 0.06
    assert content_hash(df) != content_hash(df2)


def test_bad_rows_name_the_row_and_field():
    with pytest.raises(ValueError, match="row 1: op='matmul'"):
        make_profile([{"op": "qkv_proj", "time_ms": 1.0, "tp": 1}, {"op": "matmul", "time_ms": 1.0, "tp": 1}])
    with pytest.raises(ValueError, match="row 0: time_ms=0.0"):
        make_profile([{"op": "qkv_proj", "time_ms": 0.0, "tp": 1}])
    with pytest.raises(ValueError, match="suffix"):
        write_profile(_sample(), "x.txt")


def test_reads_every_shared_table():
    df = shared_profile()
    assert set(df.source) == {"vidur", "splitwise", "sarathi"}
    assert set(df.op) <= set(OPS)
    by = df.groupby("source").op.agg(set)
    assert {"qkv_proj", "o_proj", "mlp_up", "mlp_down", "all_reduce"} <= by["vidur"]
    assert {"batch_prefill", "batch_decode"} <= by["splitwise"]
    assert {"batch_prefill", "batch_decode", "batch_mixed", "prefill_chunked"} <= by["sarathi"]
    assert (df.time_ms > 0).all()


@pytest.mark.parametrize("table", ["splitwise", "sarathi", "vidur_allreduce"])
def test_shared_rows_survive_the_schema(table):
    """ProfileRow -> profile schema -> ProfileRow predicts exactly the same times."""
    rows = list(load_rows(table))[::5]
    back = to_profile_rows(from_profile_rows(rows, table))
    assert len(back) == len(rows)
    a = np.array([predict(r) for r in rows])
    b = np.array([predict(r) for r in back])
    np.testing.assert_allclose(a, b, rtol=1e-9)
    np.testing.assert_allclose([r.measured_s for r in back], [r.measured_s for r in rows], rtol=1e-12)
