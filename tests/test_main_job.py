"""The README's main job (`python -m ep_core`): it reports what ran where, the spread of the
timings, and a GPU-vs-CPU speed-up only when a GPU ran."""
from __future__ import annotations

from ep_core.__main__ import main
from ep_core.providers import availability


def test_main_job_reports_no_speed_up_without_a_gpu(capsys):
    assert main(["--runs", "3", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "p10-p90 ms" in out and "max |difference|:" in out
    if availability("cuda")[0]:
        assert "speed-up of hybrid (GPU + CPU) over cpu:" in out
    else:
        assert "(CPU fallback)" in out and "no GPU ran" in out and "speed-up of" not in out
