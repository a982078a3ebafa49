"""The commands' shared edges: every search option declared once (parser, config field, help, default),
the new and aliased options, and the one wrapper from errors and signals to exit codes."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from tbray.commands import exits
from tbray.commands import search as command
from tbray.config import SearchConfig, SearchSpace
from tbray.errors import SearchFailed, UserError
from tbray.rayops import interrupt


def _config(*argv) -> SearchConfig:
    return command.to_config(command.parser().parse_args(["--demo", *argv]))


def test_every_setting_has_one_option_with_help_and_its_default_shown():
    filled = [f for option in command.OPTIONS for f in option.fields]
    settings = [f.name for f in dataclasses.fields(SearchConfig) if f.name != "space"]
    settings += [f"space.{f.name}" for f in dataclasses.fields(SearchSpace)]
    assert sorted(filled) == sorted(settings)  # each once: no setting without an option, none twice
    text = " ".join(command.parser().format_help().split())  # argparse wraps lines
    for option in command.OPTIONS:
        assert option.help and option.flag in text, option.flag
    assert "(default: 10,20,30)" in text and "(default: 5e-05 0.001)" in text and "(default: 0)" in text


def test_defaults_come_from_the_config():
    cfg = _config()
    assert cfg.space == SearchSpace() and cfg.reduction_factor == SearchConfig().reduction_factor
    assert cfg.mode == "min" and cfg.name  # val_loss is minimised; a timestamp name


def test_weight_decay_range_and_reduction_factor_reach_the_config():
    cfg = _config("--weight-decay-range", "1e-4", "1e-2", "--reduction-factor", "2")
    assert (cfg.space.weight_decay_min, cfg.space.weight_decay_max, cfg.reduction_factor) == (1e-4, 1e-2, 2)


@pytest.mark.parametrize("argv, message", [
    (["--weight-decay-range", "1", "0"], "--weight-decay-range needs 0 < MIN <= MAX"),
    (["--weight-decay-range", "0", "1"], "--weight-decay-range needs 0 < MIN <= MAX"),
    (["--reduction-factor", "1"], "--reduction-factor must be at least 2"),
])
def test_bad_ranges_are_user_errors_naming_the_option(argv, message):
    with pytest.raises(UserError, match=message):
        _config(*argv)


def test_aliases_users_of_tune_and_timm_type(tmp_path):
    cfg = _config("--img-size", "96,128", "--initial-checkpoint", "w.pt")
    assert cfg.space.image_sizes == (96, 128) and cfg.weights.is_absolute() and cfg.weights.name == "w.pt"
    # The resume check sees an alias as the option it stands for.
    assert command.given_options(["--img-size", "96"]) == {"--image-sizes": ("space.image_sizes",)}


@pytest.fixture
def wrapper(monkeypatch):
    """exits.run in this process: its SIGTERM handler and the signals seen put back afterwards, and no Ray
    disconnected (the test session may hold one)."""
    monkeypatch.setattr(exits, "disconnect", lambda: None)
    monkeypatch.setattr(interrupt, "_received", set())  # the signals this process saw, as before the test
    # SIGTERM does what Ctrl-C does now; an in-process Tuner.fit earlier in the session leaves Tune's own
    # SIGINT handler behind (it stops a Tune run instead of raising), so Ctrl-C is made Python's again here.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield exits.run
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _raise(exc):
    def body() -> int:
        raise exc
    return body


def test_user_error_is_one_line_and_2_search_failed_is_1(wrapper, capsys):
    assert wrapper(_raise(UserError("x.png: not an image"))) == 2
    assert capsys.readouterr().err == "tbray: error: x.png: not an image\n"
    assert wrapper(_raise(SearchFailed("every trial failed"))) == 1
    assert wrapper(_raise(ValueError("parity")), failures=(ValueError,)) == 1
    assert capsys.readouterr().err.splitlines() == ["tbray: error: every trial failed", "tbray: error: parity"]


def test_ctrl_c_is_130_and_sigterm_143_with_the_resume_hint(wrapper, capsys):
    assert wrapper(_raise(KeyboardInterrupt()), resume=lambda: "python tune/search.py --resume --name r") == 130
    assert capsys.readouterr().err == "tbray: interrupted; continue with: python tune/search.py --resume --name r\n"

    def terminated() -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # what kill, a scheduler or systemd sends
        raise AssertionError("SIGTERM did not stop the command")

    assert wrapper(terminated) == 143
    assert capsys.readouterr().err == "tbray: stopped by SIGTERM\n"
