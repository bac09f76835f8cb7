"""Progress in a log file is a few plain lines, not a redrawn bar."""

import io

from ace_ray.progress import Progress


def test_a_log_file_gets_plain_lines_at_an_interval():
    log = io.StringIO()
    with Progress(300, "features", unit="image", every=3600, stream=log) as p:
        for _ in range(300):
            p.update()
    assert log.getvalue().splitlines() == [log.getvalue().strip()]  # one line: the final one
    assert "\r" not in log.getvalue() and log.getvalue().startswith("[features] 300/300 image (100%)")
    log = io.StringIO()
    with Progress(4, "pretrain set", every=0, stream=log) as p:
        for _ in range(4):
            p.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and lines[1].startswith("[pretrain set] 2/4 it (50%)") and "ETA" in lines[1]
