"""animetagnet.confine: only regular files whose real path lies under a root, checked again on open."""

import os

import pytest

from animetagnet.confine import NotConfined, Root, confined_path, open_confined


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"inside")
    (root / "sub" / "b.jpg").write_bytes(b"deeper")
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"secret")
    (tmp_path / "rootsibling").mkdir()  # /x/root vs /x/rootsibling: no prefix confusion
    (tmp_path / "rootsibling" / "c.jpg").write_bytes(b"sibling")
    return root, outside


def test_regular_files_inside_are_read(tree):
    root, _ = tree
    r = Root.of(root)
    assert confined_path(r, "a.jpg") == str(root / "a.jpg")
    assert confined_path([r], str(root / "sub" / "b.jpg")) == str(root / "sub" / "b.jpg")
    assert confined_path(r, "sub/../a.jpg") == str(root / "a.jpg")  # stays inside: fine
    with open_confined(r, "sub/b.jpg") as fh:
        assert fh.read() == b"deeper"
    inner = root / "sub" / "link.jpg"
    os.symlink("../a.jpg", inner)  # a symlink that stays inside the root is followed
    assert confined_path(r, inner) == str(root / "a.jpg")


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/passwd", "../rootsibling/c.jpg", "sub", "missing.jpg"])
def test_outside_or_not_a_file_is_refused(tree, name):
    root, _ = tree
    with pytest.raises(NotConfined):
        confined_path(Root.of(root), name)
    with pytest.raises(NotConfined):
        open_confined(Root.of(root), name)


def test_symlinks_out_need_permission(tree):
    root, outside = tree
    os.symlink(outside, root / "passwd.jpg")
    os.symlink("/etc/passwd", root / "etc.jpg")
    os.symlink(root.parent / "rootsibling", root / "sibdir")  # a directory link leaving the root
    for name in ("passwd.jpg", "etc.jpg", "sibdir/c.jpg"):
        with pytest.raises(NotConfined, match="symlink to outside"):
            open_confined(Root.of(root), name)
    lax = Root.of(root, allow_symlinks=True)
    with open_confined(lax, "passwd.jpg") as fh:
        assert fh.read() == b"secret"
    # a root reached through a symlink is kept as its real path
    alias = root.parent / "alias"
    os.symlink(root, alias)
    assert Root.of(alias).path == str(root) and confined_path(Root.of(alias), "a.jpg") == str(root / "a.jpg")


def test_fifo_and_devices_are_refused_without_blocking(tree):
    root, _ = tree
    os.mkfifo(root / "pipe.jpg")  # opening it for reading would block forever
    with pytest.raises(NotConfined, match="not a regular file"):
        open_confined(Root.of(root), "pipe.jpg")
    os.symlink("/dev/zero", root / "zero.jpg")
    with pytest.raises(NotConfined, match="not a regular file"):
        open_confined(Root.of(root, allow_symlinks=True), "zero.jpg")


def test_swap_between_check_and_open_is_refused(tree, monkeypatch):
    """The path checked is replaced by a symlink before the open: O_NOFOLLOW / the fd check refuse it."""
    root, outside = tree
    import animetagnet.confine as confine

    real_resolve = confine._resolve

    def resolve_then_swap(roots, path):
        got = real_resolve(roots, path)
        os.unlink(root / "a.jpg")
        os.symlink(outside, root / "a.jpg")
        return got

    monkeypatch.setattr(confine, "_resolve", resolve_then_swap)
    with pytest.raises(NotConfined, match="changed while being opened"):
        open_confined(Root.of(root), "a.jpg")


def test_directory_swap_between_check_and_open_is_refused(tree, monkeypatch, tmp_path):
    root, _ = tree
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "b.jpg").write_bytes(b"evil")
    import animetagnet.confine as confine

    real_resolve = confine._resolve

    def resolve_then_swap(roots, path):
        got = real_resolve(roots, path)
        os.rename(root / "sub", tmp_path / "old_sub")
        os.symlink(evil, root / "sub")
        return got

    monkeypatch.setattr(confine, "_resolve", resolve_then_swap)
    with pytest.raises(NotConfined, match="changed while being opened"):
        open_confined(Root.of(root), "sub/b.jpg")
