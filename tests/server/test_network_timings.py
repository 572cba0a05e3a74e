"""A network a job delivers, fits or compares is timed ``settings.network_timings`` times, each a
request of its own, and the job keeps the median (jobs/deploy.py: send_measurement,
record_verification, combined_timings). The whole path, agent included, is in
tests/server/test_job_pipeline.py."""
from __future__ import annotations

import json
from typing import Any

import pytest

import automl_server.profiling as profiling
from automl_server.celery_app import make_celery
from automl_server.jobs.deploy import RECORD_VERIFICATION, combined_timings
from automl_server.settings import Settings, SettingsError, settings_from_env
from device_agents.protocol import MeasureNetworkReply, TargetPayload

ARCH = {"space": "tiny", "blocks": ["mb3_k3"]}


def answer(ms: float | None, error: str | None = None) -> dict[str, Any]:
    return MeasureNetworkReply(TargetPayload("local-cpu", "onnxruntime", "test"), dict(ARCH), "test",
                               measured_ms=ms, measured_file=True, error=error).to_dict()


def test_three_timings_keep_the_median_and_every_figure() -> None:
    answers = [answer(1.2), answer(1.0), answer(1.5)]
    answers[0]["stats"] = {"median_ms": 1.2, "cv": 0.03}  # the kept timing's evidence goes with it
    kept, result = combined_timings(answers)
    assert kept == 0 and result["measured_ms"] == 1.2 and result["stats"] == {"median_ms": 1.2, "cv": 0.03}
    assert result["timings_ms"] == [1.2, 1.0, 1.5] and result["timing_errors"] == 0
    assert "arch" not in result  # the stage's file holds the figures, not the network again


def test_a_failed_timing_is_left_out_and_an_even_count_keeps_the_faster_middle() -> None:
    kept, result = combined_timings([answer(2.0), answer(None, "session died"), answer(1.0)])
    # Two clean timings: load only ever slows a timing, so the faster of the middle pair.
    assert kept == 2 and result["measured_ms"] == 1.0
    assert result["timings_ms"] == [2.0, 1.0] and result["timing_errors"] == 1 and "error" not in result
    kept, result = combined_timings([answer(3.0), answer(None, "x"), answer(1.0), answer(2.0), answer(4.0)])
    assert kept == 3 and result["measured_ms"] == 2.0 and result["timing_errors"] == 1


def test_every_timing_failed_reports_the_device_error() -> None:
    kept, result = combined_timings([answer(None, "unsupported op Foo"), answer(None, "unsupported op Foo")])
    assert kept == 0 and result["error"] == "unsupported op Foo" and result["timing_errors"] == 2


def test_the_result_file_waits_for_every_timing_of_its_own_send(settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    celery = make_celery(settings, eager=True)
    calibrated: list[dict[str, Any]] = []
    monkeypatch.setattr(profiling, "record_network", calibrated.append)
    record = celery.tasks[RECORD_VERIFICATION]
    result = settings.artifacts_dir / "job-1" / "verify.json"

    # An earlier send of this file (a try the promise moved on from) left two of its three timings.
    for number in (0, 1):
        record.apply(args=[answer(9.0), "job-1", "verify.json", "earlier", number, 3]).get()
    record.apply(args=[answer(1.2), "job-1", "verify.json", "now", 0, 3]).get()
    record.apply(args=[answer(1.0), "job-1", "verify.json", "now", 1, 3]).get()
    assert not result.exists() and calibrated == []  # two of three: the stage still waits

    record.apply(args=[answer(1.5), "job-1", "verify.json", "now", 2, 3]).get()
    written = json.loads(result.read_text())
    assert written["measured_ms"] == 1.2 and written["timings_ms"] == [1.2, 1.0, 1.5]  # the earlier send's 9.0 not
    assert [c["measured_ms"] for c in calibrated] == [1.2]  # the kept timing calibrates, once
    assert not list(result.parent.glob("verify.json.now-*"))  # this send's timings are folded into the file

    # The broker delivers the last answer again (acks_late): nothing is recorded twice.
    record.apply(args=[answer(1.5), "job-1", "verify.json", "now", 2, 3]).get()
    assert json.loads(result.read_text()) == written and len(calibrated) == 1


def test_one_timing_writes_its_answer_as_it_comes(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    celery = make_celery(settings, eager=True)
    calibrated: list[dict[str, Any]] = []
    monkeypatch.setattr(profiling, "record_network", calibrated.append)
    celery.tasks[RECORD_VERIFICATION].apply(args=[answer(1.3), "job-2", "fit-try-1.json"]).get()
    written = json.loads((settings.artifacts_dir / "job-2" / "fit-try-1.json").read_text())
    assert written["measured_ms"] == 1.3 and len(calibrated) == 1
    assert written["timings_ms"] == [1.3] and written["timing_errors"] == 0  # as several timings report


@pytest.mark.parametrize("bad", ["0", "10", "three"])
def test_a_timing_count_out_of_range_names_what_is_accepted(bad: str) -> None:
    with pytest.raises(SettingsError, match="AUTOML_NETWORK_TIMINGS"):
        settings_from_env({"AUTOML_NETWORK_TIMINGS": bad})
