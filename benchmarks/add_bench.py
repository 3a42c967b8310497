"""Speed and memory of the local repository, measured end to end through the `dits` CLI.

    python -m benchmarks add [--data-dir DIR] [--size-gib 4] [--rss-gib 10] [--files 10000] [--json]

Scenarios (issue 2, section 7):
  throughput  `dits add` of N GiB of fresh incompressible media, page-cached (target >= 1 GB/s)
  tree        `dits status` and `dits add .` on an unchanged tree of 10,000 files (<= 0.5 s)
  insert      a 1 GiB file with 100 bytes inserted in the middle: new chunks on re-add (<= 2)
  rss         peak RSS of `dits add` of one 10 GiB file (<= 300 MiB)
Each runs the real CLI in a subprocess (`python -m dits.cli.main`), so figures include start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import blake3

REPO_ROOT = Path(__file__).resolve().parents[1]


def _dits(cwd: Path, *args: str) -> tuple[float, str]:
    """Run dits; return (wall seconds, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DITS_COMMIT_TIME": "1700000000"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dits.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dits {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return seconds, proc.stdout


def write_random(path: Path, size: int, seed: bytes) -> None:
    """Incompressible bytes from BLAKE3's XOF, written in 64 MiB pieces."""
    hasher = blake3.blake3(seed)
    with open(path, "wb") as fh:
        done = 0
        while done < size:
            n = min(64 << 20, size - done)
            fh.write(hasher.digest(length=n, seek=done))
            done += n


def fresh_repo(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    _dits(path, "init")
    _dits(path, "config", "user.name", "Bench")
    _dits(path, "config", "user.email", "bench@example.com")
    return path


def bench_throughput(data_dir: Path, size_gib: float) -> dict[str, float]:
    repo = fresh_repo(data_dir / "throughput")
    size = int(size_gib * (1 << 30))
    media = repo / "export.mov"
    write_random(media, size, b"throughput")
    with open(media, "rb") as fh:  # make sure it is page-cached
        while fh.read(64 << 20):
            pass
    copy_seconds = copy_reference(media, repo / "copy.bin")
    seconds, out = _dits(repo, "add", "export.mov", "--json")
    report = json.loads(out)
    assert report["bytes_read"] == size
    result = {
        "bytes": size,
        "seconds": seconds,
        "gb_per_s": size / seconds / 1e9,
        "copy_gb_per_s": size / copy_seconds / 1e9,
        "vs_copy": copy_seconds / seconds,
    }
    shutil.rmtree(repo)
    return result


def copy_reference(src: Path, dst: Path) -> float:
    """Seconds for a plain copy of ``src`` next to the store, fsync included: the ceiling.

    `dits add` must at least read the file and write it once into the store, so a copy on the
    same filesystem in the same run is the honest yardstick on a machine whose page-cache
    write speed varies several-fold from minute to minute (docs/benchmarks.md).
    """
    buf = bytearray(16 << 20)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        view = memoryview(buf)
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def bench_tree(data_dir: Path, files: int) -> dict[str, float]:
    repo = fresh_repo(data_dir / "tree")
    for i in range(files):
        folder = repo / f"shot_{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"frame_{i:05d}.txt").write_bytes(b"%d\n" % i * (1 + i % 50))
    _dits(repo, "add", ".")
    _dits(repo, "commit", "-m", "tree")
    status_runs = [_dits(repo, "status", "--json")[0] for _ in range(3)]
    add_runs = [_dits(repo, "add", ".")[0] for _ in range(3)]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import dits.cli.main"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
    )
    startup = time.perf_counter() - t0
    shutil.rmtree(repo)
    return {
        "files": files,
        "status_seconds": min(status_runs),
        "add_unchanged_seconds": min(add_runs),
        "python_import_seconds": startup,
    }


def bench_insert(data_dir: Path) -> dict[str, float]:
    repo = fresh_repo(data_dir / "insert")
    size = 1 << 30
    media = repo / "timeline.mov"
    write_random(media, size, b"insert")
    _dits(repo, "add", "timeline.mov")
    _dits(repo, "commit", "-m", "v1")
    data = media.read_bytes()
    middle = size // 2
    media.write_bytes(data[:middle] + os.urandom(100) + data[middle:])
    del data
    _, out = _dits(repo, "add", "timeline.mov", "--json")
    report = json.loads(out)
    shutil.rmtree(repo)
    return {
        "chunks": report["chunks"],
        "new_chunks": report["new_chunks"],
        "new_bytes": report["new_bytes"],
    }


def bench_rss(data_dir: Path, size_gib: float) -> dict[str, float]:
    repo = fresh_repo(data_dir / "rss")
    size = int(size_gib * (1 << 30))
    write_random(repo / "huge.mov", size, b"rss")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dits.cli.main", "add", "huge.mov"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    peak_kib = 0
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except FileNotFoundError:
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit("dits add failed in the RSS scenario")
    shutil.rmtree(repo)
    return {
        "bytes": size,
        "peak_rss_mib": peak_kib / 1024,
        "seconds": seconds,
        "gb_per_s": size / seconds / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks add",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dits-bench-add"))
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--rss-gib", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--only", choices=["throughput", "tree", "insert", "rss"], action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    chosen = args.only or ["throughput", "tree", "insert", "rss"]
    results: dict[str, dict[str, float]] = {}
    if "throughput" in chosen:
        results["throughput"] = bench_throughput(args.data_dir, args.size_gib)
    if "tree" in chosen:
        results["tree"] = bench_tree(args.data_dir, args.files)
    if "insert" in chosen:
        results["insert"] = bench_insert(args.data_dir)
    if "rss" in chosen:
        results["rss"] = bench_rss(args.data_dir, args.rss_gib)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, figures in results.items():
            print(
                f"{name:10} "
                + "  ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in figures.items()
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
