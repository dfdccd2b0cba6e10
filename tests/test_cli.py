"""The CLI as a user runs it: real processes, a real server, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("module", ["movierec", "trainer", "server"])
def test_help(module: str) -> None:
    result = run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_train_flags_carry_their_comments() -> None:
    out = run("movierec", "train", "--help").stdout
    assert "--like-threshold" in out and "watched and liked" in out


def start_server(
    artifacts: Path, port: int, *flags: str, json_logs: bool = False
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "movierec",
            *(["--log-format", "json"] if json_logs else []),
            "serve",
            "--artifacts",
            str(artifacts),
            "--port",
            str(port),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "movierec is serving" in line:
            return proc
        assert time.monotonic() < deadline, "server did not start"
    raise AssertionError(f"server exited with {proc.wait()}:\n{''.join(lines)}")


def stop_server(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, expect a clean exit 0, return what the server printed."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None
    log = proc.stdout.read()
    proc.stdout.close()
    return log


def test_serve_recommend_similar_and_sigterm(artifacts_dir: Path, recommender) -> None:
    port = free_port()
    proc = start_server(artifacts_dir, port)
    try:
        target = f"127.0.0.1:{port}"
        user = str(int(recommender.artifacts.histories.user_ids[0]))
        table = run("movierec", "recommend", "--target", target, "--user", user, "-k", "3")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["MovieId", "Title", "Genres", "Similarity"]
        assert len(lines) == 5 and lines[-1].startswith("(model ")
        why = run("movierec", "recommend", "--target", target, "--user", user, "-k", "2",
                  "--explain", "2")  # fmt: skip
        assert why.stdout.splitlines()[0].split()[-2:] == ["Because", "of"]
        rows, _ = recommender.artifacts.histories.lookup(int(user))
        watched = {recommender.artifacts.movies[r].title for r in rows}
        assert any(title in why.stdout.splitlines()[1] for title in watched)
        similar = run(
            "movierec", "similar", "--target", target, "--movie", "1", "-k", "4", "--json"
        )
        assert len(json.loads(similar.stdout)["recommendations"]) == 4
        new_user = run("movierec", "recommend", "--target", target, "--user", "999999999")
        assert new_user.returncode == 0, new_user.stderr
        assert "most popular: no history to go on" in new_user.stdout.splitlines()[-1]
        missing = run("movierec", "similar", "--target", target, "--movie", "999999999")
        assert missing.returncode == 1
        assert missing.stderr.strip() == (
            "movierec similar: NOT_FOUND: movie 999999999 is not in the catalogue"
        )
        movie = json.loads(run("movierec", "movie", "--target", target, "--movie", "1").stdout)
        assert movie["movie_id"] == "1" and "movie_key" in movie  # snake_case, as --json
        assert run("movierec", "health", "--target", target).stdout.strip() == "SERVING"
    finally:
        assert "stopped" in stop_server(proc)


def test_sigterm_drains_with_calls_in_flight(artifacts_dir: Path, recommender) -> None:
    """NOT_SERVING at once, answering through the drain, then UNAVAILABLE; exit 0; JSON logs."""
    import threading

    from movierec.client import Client
    from movierec.errors import StatusError

    port = free_port()
    proc = start_server(artifacts_dir, port, "--drain", "1.5", "--grace", "5", json_logs=True)
    assert proc.stdout is not None
    lines: list[str] = []  # read as it comes: an access line per call would fill the pipe
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    ids = recommender.artifacts.movie_ids.tolist()
    outcomes: list[tuple[float, str]] = []  # (when the call started, its status)
    stop = threading.Event()

    def caller() -> None:
        with Client(f"127.0.0.1:{port}", timeout=5) as c:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    c.recommend(movies=ids[:50], k=20, explain=3)
                    outcomes.append((start, "OK"))
                except StatusError as e:
                    outcomes.append((start, e.code))
                    time.sleep(0.01)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with Client(f"127.0.0.1:{port}", timeout=2) as probe:
            time.sleep(0.3)
            assert probe.health() == "NOT_SERVING"
        assert proc.wait(timeout=30) == 0
    finally:
        stop.set()
        proc.kill()  # a no-op once it has exited
        for t in threads:
            t.join(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
    before_stop = [code for at, code in outcomes if at < sigterm + 1.4]
    assert any(at > sigterm for at, _ in outcomes)
    assert set(before_stop) == {"OK"}  # all answered, through the drain while NOT_SERVING
    refused = {code for at, code in outcomes if at >= sigterm + 1.4}
    # calls that arrived as it stopped (the client retries UNAVAILABLE until its deadline)
    assert refused <= {"OK", "UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"}
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"time", "level", "logger", "message"} <= set(records[-1])
    assert records[-1]["message"] == "stopped"
    assert any(r["logger"] == "movierec.access" and r["code"] == "OK" for r in records)


def test_several_processes_share_one_port(artifacts_dir: Path, recommender) -> None:
    port = free_port()
    proc = start_server(artifacts_dir, port, "--processes", "2")
    try:
        children = [
            int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == proc.pid
        ]  # fmt: skip
        assert len(children) == 2
        user = str(int(recommender.artifacts.histories.user_ids[0]))
        for _ in range(6):  # each call is a new connection; the kernel spreads them
            out = run("movierec", "recommend", "--target", f"127.0.0.1:{port}", "--user", user)
            assert out.returncode == 0, out.stderr
    finally:
        log = stop_server(proc)
    assert log.count("server.app: stopped") == 2
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_sighup_and_reload_command_swap_the_model(
    artifacts_dir: Path, sample_dir: Path, tmp_path: Path, recommender
) -> None:
    import shutil

    from movierec.artifacts import read_artifacts
    from trainer.config import TrainConfig
    from trainer.pipeline import run_training

    from .conftest import SAMPLE_CONFIG

    current = tmp_path / "current"
    shutil.copytree(artifacts_dir, current)
    port = free_port()
    proc = start_server(current, port, "--tokens-file", str(_write(tmp_path / "t", "tok\n")),
                        "--admin-tokens-file", str(_write(tmp_path / "a", "admin\n")))  # fmt: skip
    target = ["--target", f"127.0.0.1:{port}", "--token", "tok"]
    admin = ["--target", f"127.0.0.1:{port}", "--token", "admin"]

    def version() -> str:
        out = run("movierec", "recommend", *target, "--movies", "1,2", "-k", "1", "--json")
        return str(json.loads(out.stdout)["model_version"])

    try:
        assert version() == recommender.model_version
        # A re-train into the same directory replaces it atomically; SIGHUP picks it up.
        config = TrainConfig(**{**vars(SAMPLE_CONFIG), "seed": 7})
        run_training(current, config, data=sample_dir, show_progress=False)
        new = read_artifacts(current).model_version
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while version() != new:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        (current / "vectors.npy").write_bytes(b"truncated")
        refused = run("movierec", "reload", *admin)
        assert refused.returncode == 1
        assert refused.stderr.startswith("movierec reload: FAILED_PRECONDITION: reload refused")
        assert "vectors.npy" in refused.stderr
        assert version() == new  # the old model keeps serving
        for token in (["--token", "tok"], []):  # a client token is not an admin token
            denied = run("movierec", "reload", "--target", f"127.0.0.1:{port}", *token)
            assert denied.returncode == 1 and "missing or invalid bearer token" in denied.stderr
    finally:
        log = stop_server(proc)
    assert "reloaded: serving" in log and "reload refused, still serving" in log


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("damage", ["flipped bit", "missing file", "truncated", "no directory"])
def test_serve_refuses_a_damaged_artifact(artifacts_dir: Path, tmp_path: Path, damage: str) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(artifacts_dir, broken)
    index = broken / "index.faiss"
    data = bytearray(index.read_bytes())
    expected = {
        "flipped bit": f"{index}: sha256 does not match the manifest (corrupt)",
        "missing file": f"{index}: missing",
        "truncated": f"{index}: {len(data) // 2} bytes, manifest says {len(data)} (truncated",
        "no directory": f"{broken}: not an artifact directory (no such directory)",
    }[damage]
    if damage == "flipped bit":
        data[40] ^= 0x01
        index.write_bytes(data)
    elif damage == "missing file":
        index.unlink()
    elif damage == "truncated":
        index.write_bytes(data[: len(data) // 2])
    else:
        shutil.rmtree(broken)
    result = run("movierec", "serve", "--artifacts", str(broken), "--port", "0")
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith(f"movierec serve: error: {expected}"), lines
    assert "Traceback" not in result.stderr


def test_serve_refuses_bad_settings_in_one_line(artifacts_dir: Path) -> None:
    for flags, message in (
        (["--workers", "-2"], "--workers must be -1 (one per CPU), 0 (on the event loop) or more"),
        (["--processes", "0"], "--processes must be at least 1, got 0"),
        (
            ["--tls-cert", "x.pem"],
            "--tls-cert and --tls-key go together (and --tls-client-ca needs both)",
        ),
        (["--port", "70000"], "--port must be a port number (0-65535), got 70000"),
    ):
        result = run("movierec", "serve", "--artifacts", str(artifacts_dir), *flags)
        assert result.returncode == 1
        assert result.stderr.strip() == f"movierec serve: error: {message}", result.stderr


def test_train_reports_bad_data_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (2000),Drama\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,x,0\n")
    result = run("movierec", "train", "--data", str(tmp_path), "--out", str(tmp_path / "a"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"movierec train: error: {tmp_path / 'ratings.csv'}:2: column 'rating' has 'x', "
        "expected a number"
    )
    assert not (tmp_path / "a").exists()


def test_evaluate_a_split_in_the_dat_layout(sample, tmp_path: Path) -> None:
    """A split of ml-1m-style files keeps its layout: train/*.dat beside test.dat."""
    import pandas as pd

    from trainer.split import holdout_split

    ratings = pd.DataFrame(sample.ratings)
    train, test = holdout_split(ratings, seed=0)
    (tmp_path / "train").mkdir()
    with open(tmp_path / "train" / "movies.dat", "w", encoding="latin-1") as f:
        f.writelines(f"{m}::{title}::{'|'.join(g)}\n" for m, title, g in sample.movies)
    for path, table in ((tmp_path / "train" / "ratings.dat", train), (tmp_path / "test.dat", test)):
        path.write_text(
            "".join(f"{u}::{m}::{r:g}::{t}\n" for u, m, r, t in table.itertuples(False))
        )
    result = run("movierec", "evaluate", "--split", str(tmp_path), "--out", str(tmp_path / "a"),
                 "--epochs", "2", "--quiet", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["model"]["ndcg@10"] > scores["popularity"]["ndcg@10"]


def test_readme_documents_every_serve_setting() -> None:
    """README's operations table is written by hand: it must name every flag and variable."""
    from server.options import settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, _, _, _, env in settings():
        assert f"`--{name.replace('_', '-')}" in readme, name
        if env:
            assert env in readme or env.rpartition("_")[2] in readme, env


def test_a_full_disk_during_export_is_one_line_and_keeps_the_old_artifact(
    sample_dir: Path, tmp_path: Path
) -> None:
    """A file-size limit stands in for a full disk: writes fail with EFBIG part-way."""
    import resource

    out = tmp_path / "a"
    first = run("movierec", "train", "--data", str(sample_dir), "--out", str(out), "--epochs",
                "1", "--quiet")  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = subprocess.run(
        [sys.executable, "-m", "movierec", "train", "--data", str(sample_dir), "--out", str(out),
         "--epochs", "1", "--quiet", "--seed", "5"],
        capture_output=True, text=True, timeout=120, env=ENV, preexec_fn=small_files,
    )  # fmt: skip
    assert full.returncode == 1
    errors = [line for line in full.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and "cannot write the artifact" in errors[0], full.stderr
    assert "Traceback" not in full.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no half-written leftovers


def test_ids_are_integers_only_when_written_plainly() -> None:
    """`--movie 007` was sent as movie 7: in a catalogue of SKUs, another movie."""
    from movierec.cli import _key

    typed = ["42", "-3", "007", "+7", "1_0", "\u0667", "9" * 20]
    assert [_key(t) for t in typed] == [42, -3, "007", "+7", "1_0", "\u0667", "9" * 20]


@pytest.mark.parametrize(
    "argv",
    [
        ["recommend", "--user", "1", "-k", "99999999999"],
        ["recommend", "--user", "1", "--explain", "-1"],
        ["recommend", "--user", "1", "--years", "99999999999-"],
        ["similar", "--movie", "1", "-k", "1e3"],
    ],
)
def test_numbers_the_wire_cannot_carry_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """They used to reach the protobuf setter and print its traceback."""
    from movierec.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expected" in err and "Traceback" not in err
