"""Both spellings of every long flag, and a "did you mean" with the sub-command's own usage line."""

from __future__ import annotations

import pytest

from ctrkit.cli import build_parser, main


def test_underscore_and_dash_spellings_are_the_same_flag():
    parser = build_parser()
    dashed = parser.parse_args(["train", "--model", "lr", "--batch-size", "64", "--lr-patience=3", "--no-batch-norm"])
    underscored = parser.parse_args(["train", "--model", "lr", "--batch_size", "64", "--lr_patience=3",
                                     "--no-batch_norm"])
    for args in (dashed, underscored):  # train's values are strings until TrainConfig validates them
        assert (args.batch_size, args.lr_patience, args.batch_norm) == ("64", "3", False)
    assert vars(dashed) == vars(underscored)
    preprocess = parser.parse_args(["preprocess", "criteo", "rows.tsv", "--out", "s.lmdb", "--min_count", "3"])
    assert preprocess.min_count == 3


def test_an_unknown_flag_names_the_closest_one_under_the_sub_commands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "lr", "--data", "x", "--batchsize", "5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ctrkit train ")
    assert err.strip().splitlines()[-1] == ("ctrkit train: error: unrecognized arguments: --batchsize 5; "
                                            "--batchsize: did you mean --batch_size?")
    with pytest.raises(SystemExit):
        main(["preprocess", "criteo", "rows.tsv", "--out", "s.lmdb", "--min_cnt", "3"])
    err = capsys.readouterr().err
    assert err.startswith("usage: ctrkit preprocess criteo ")
    assert "--min_cnt: did you mean --min-count?" in err


def test_a_flag_nothing_resembles_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "s.lmdb", "--zzzzqqq"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "ctrkit inspect: error: unrecognized arguments: --zzzzqqq"
