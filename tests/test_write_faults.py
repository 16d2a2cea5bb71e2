"""Writing results when the disk says no: one clear line and exit 2 (setup) or 1 (mid-run), never a torn record.

A full disk and a read-only one are real: a tiny tmpfs mounted in a user and mount namespace
(`unshare -rm`; skipped where that is not allowed). A write cut short is also simulated
portably, by an os.write that writes half a record and then fails with ENOSPC.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from cli_helpers import REPO, run_cli


N = 60  # images: enough result bytes (several KB) to overflow the last free page of a tmpfs


@pytest.fixture()
def folder(tmp_path, real_images):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(N):
        shutil.copy(real_images[i % 8], root / f"{i:02d}_{real_images[i % 8].name}")
    return root


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(proc, *needles):
    err = [line for line in proc.stderr.splitlines() if "error" in line or "skipped" in line]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len([e for e in err if "error:" in e]) <= 1, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_setup_failures_are_one_line_exit_2(folder, tiny_model, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (str(afile / "r.jsonl"), "/proc/no/such/dir/r.jsonl", "/sys/r.jsonl"):
        for fmt in ("jsonl", "csv", "json"):
            proc = run_cli("tag", str(folder), "--model", str(tiny_model), "-f", fmt, "-o", out)
            assert proc.returncode == 2, (out, fmt, proc.stderr)
            one_line_error(proc, "animetagnet: error: cannot write results to")
    proc = run_cli("tag", str(folder), "--model", str(tiny_model), "-f", "txt", "--output-dir", str(afile / "caps"))
    assert proc.returncode == 2
    one_line_error(proc, "cannot write captions under")


PARTIAL = textwrap.dedent("""
    import errno, os, sys
    real, calls = os.write, [0]
    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.endswith(sys.argv[1]):
            calls[0] += 1
            if calls[0] == 4:  # the third record (after the CSV header, if any): half of it lands
                return real(fd, bytes(data)[: len(data) // 2])
            if calls[0] > 4:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    os.write = write
    from animetagnet.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_record_cut_short_is_truncated_back(folder, tiny_model, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    env = {"PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", PARTIAL, out.name, "tag", str(folder), "--model", str(tiny_model),
                           "-f", fmt, "-o", str(out)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, **env})
    assert proc.returncode == 1, proc.stderr
    one_line_error(proc, "No space left on device", "rerun with --resume")
    text = out.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 3  # jsonl: three whole records; csv: the header and two
    if fmt == "jsonl":
        assert all(json.loads(line)["path"] for line in lines)
    again = run_cli("tag", str(folder), "--model", str(tiny_model), "-f", fmt, "-o", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == N + (fmt == "csv") and len(set(rows)) == len(rows)


def _unshare_ok() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _unshare_ok(), reason="no user+mount namespaces here (unshare -rm)")


def in_namespace(script: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-rm", "sh", "-ec", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})


@needs_tmpfs
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_full_disk_real(folder, tiny_model, tmp_path, fmt):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    tag = f"{sys.executable} -m animetagnet tag {folder} --model {tiny_model} -f {fmt} -o {mnt}/out.{fmt}"
    proc = in_namespace(f"""
        mount -t tmpfs -o size=64k tmpfs {mnt}
        head -c 61440 /dev/zero > {mnt}/filler || true
        set +e
        {tag} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp {mnt}/out.{fmt} {tmp_path}/after_full 2>/dev/null
        rm {mnt}/filler
        {tag} --resume 2> {tmp_path}/resume.err; echo $? > {tmp_path}/resume.rc
        cp {mnt}/out.{fmt} {tmp_path}/final
        ls -a {mnt} > {tmp_path}/listing
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "1", err
    assert "Traceback" not in err and "No space left on device" in err and err.count("error:") == 1
    if fmt == "json":  # all or nothing: no file, and no temporary file left behind
        assert not (tmp_path / "after_full").exists()
    else:
        partial = (tmp_path / "after_full").read_text()
        assert partial.endswith("\n") and 0 < len(partial.splitlines()) < N + (fmt == "csv")
        if fmt == "jsonl":
            [json.loads(line) for line in partial.splitlines()]
    assert (tmp_path / "resume.rc").read_text().strip() == "0", (tmp_path / "resume.err").read_text()
    final = (tmp_path / "final").read_text()
    if fmt == "json":
        assert len(json.loads(final)) == N
    else:
        rows = final.splitlines()
        assert len(rows) == N + (fmt == "csv") and len(set(rows)) == len(rows)
    assert not [n for n in (tmp_path / "listing").read_text().split() if n.endswith(".tmp")]


@needs_tmpfs
def test_read_only_disk_real(folder, tiny_model, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    caps = mnt / "imgs"
    base = f"{sys.executable} -m animetagnet tag --model {tiny_model}"
    proc = in_namespace(f"""
        mount -t tmpfs -o size=64m tmpfs {mnt}
        cp -r {folder} {caps}
        mount -o remount,ro {mnt}
        set +e
        {base} {folder} -f jsonl -o {mnt}/out.jsonl 2> {tmp_path}/a.err; echo $? > {tmp_path}/a.rc
        {base} {folder} -f json -o {mnt}/out.json 2> {tmp_path}/b.err; echo $? > {tmp_path}/b.rc
        {base} {folder} -f txt --output-dir {mnt}/caps 2> {tmp_path}/c.err; echo $? > {tmp_path}/c.rc
        {base} {caps} -f txt 2> {tmp_path}/d.err; echo $? > {tmp_path}/d.rc
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name, rc in (("a", "2"), ("b", "2"), ("c", "2"), ("d", "1")):
        err = (tmp_path / f"{name}.err").read_text()
        assert (tmp_path / f"{name}.rc").read_text().strip() == rc, (name, err)
        assert "Traceback" not in err and "Read-only file system" in err, (name, err)
    d = (tmp_path / "d.err").read_text()
    assert d.count("cannot write caption") == 1 and "the run stops" in d  # the disk, not each file: one line


def test_caption_write_errors_disk_stops_the_run_a_file_does_not(tmp_path, monkeypatch):
    import errno
    import os

    from animetagnet import outputs
    from animetagnet.formatting import CaptionStyle
    from animetagnet.results import TagResult

    img = tmp_path / "a.jpg"
    img.write_bytes(b"")
    result = TagResult(path=str(img), rating="general", ratings={"general": 0.9}, tags={"general": {"smile": 0.9}})
    writer = outputs.make_writer("txt", style=CaptionStyle())
    for code, stops in ((errno.EACCES, False), (errno.ENOSPC, True), (errno.EROFS, True)):
        def fail(path, text, code=code):
            raise OSError(code, os.strerror(code), str(path))

        monkeypatch.setattr(outputs, "atomic_write_text", fail)
        if stops:
            with pytest.raises(outputs.WriteError, match="cannot write caption .*the run stops"):
                writer.write(result)
        else:
            assert "Permission denied" in writer.write(result)


@needs_tmpfs
def test_gallery_index_on_a_full_disk(folder, tiny_model, tmp_path):
    """`index` into a database on a disk that fills up: one line (exit 1 mid-run, 2 if even the schema does
    not fit), and once there is room a plain rerun completes the same database."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    index = f"{sys.executable} -m animetagnet index {folder} --db {mnt}/g.db --model {tiny_model} -q"
    search = f"{sys.executable} -m animetagnet search --db {mnt}/g.db --format json --limit 1000"
    proc = in_namespace(f"""
        mount -t tmpfs -o size=128k tmpfs {mnt}
        set +e
        {index} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        mount -o remount,size=8m {mnt}
        {index} 2> {tmp_path}/again.err; echo $? > {tmp_path}/again.rc
        {search} > {tmp_path}/found.json 2> {tmp_path}/search.err
        {index} --db /sys/g.db 2> {tmp_path}/sys.err; echo $? > {tmp_path}/sys.rc
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() in ("1", "2"), err
    assert "Traceback" not in err and err.count("error:") == 1 and "database or disk is full" in err, err
    assert (tmp_path / "again.rc").read_text().strip() == "0", (tmp_path / "again.err").read_text()
    assert json.loads((tmp_path / "found.json").read_text())["total"] == N
    sys_err = (tmp_path / "sys.err").read_text()
    assert (tmp_path / "sys.rc").read_text().strip() == "2" and "Traceback" not in sys_err
    assert "cannot write the gallery database" in sys_err


def test_ray_shard_folder_that_cannot_be_written_is_refused_before_ray_starts(folder, tiny_model):
    proc = run_cli("tag", str(folder), "--model", str(tiny_model), "--engine", "ray", "-o", "/sys/shards")
    assert proc.returncode == 2
    one_line_error(proc, "cannot write result shards to /sys/shards")


@needs_tmpfs
def test_ray_shard_on_a_full_disk_is_a_write_error(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = textwrap.dedent(f"""
        from animetagnet.distributed.shards import ShardStore
        from animetagnet.errors import WriteError
        import os
        store = ShardStore({str(mnt)!r}, "jsonl")
        store.write_shard("a", [{{"path": "x.jpg", "tags": {{}}}}])
        try:
            store.write_shard("b", [{{"path": f"{{i}}.jpg", "pad": "y" * 100}} for i in range(1000)])
        except WriteError as exc:
            print("WriteError:", exc)
        print(sorted(n for n in os.listdir({str(mnt)!r})))
    """)
    (tmp_path / "shard_probe.py").write_text(code)
    proc = in_namespace(f"mount -t tmpfs -o size=16k tmpfs {mnt}\n{sys.executable} {tmp_path / 'shard_probe.py'}",
                        tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WriteError: cannot write result shard" in proc.stdout and "No space left on device" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "['part-a.jsonl']"  # no partial shard, no temporary file
