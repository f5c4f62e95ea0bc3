"""The in-memory root filesystem model: paths, parents, ordering, in-image symlinks."""

import pytest

from fwgen.errors import UserError
from fwgen.rootfs import EntryType, RootFS, normalize_path


def test_normalize_path_keeps_paths_inside_the_root():
    assert normalize_path("./usr//bin/../sbin/x") == "/usr/sbin/x"
    assert normalize_path("/") == "/"
    with pytest.raises(UserError, match="escapes the root"):
        normalize_path("../etc/passwd")


def test_parents_are_created_and_iteration_puts_directories_first():
    rootfs = RootFS()
    rootfs.add_file("/usr/bin/tool", b"x", 0o755, provenance="deb:tool")
    rootfs.add_file("/usr-local", b"")
    paths = [e.path for e in rootfs]
    assert paths == ["/", "/usr", "/usr/bin", "/usr/bin/tool", "/usr-local"]
    assert rootfs["/usr/bin"].type is EntryType.DIR
    assert rootfs["/usr/bin"].provenance == "deb:tool"


def test_later_layers_replace_files_and_keep_their_provenance():
    rootfs = RootFS()
    rootfs.add_file("/etc/hostname", b"a\n", provenance="deb:base-files")
    rootfs.add_file("/etc/hostname", b"b\n", provenance="overlay:base")
    assert rootfs["/etc/hostname"].data == b"b\n"
    assert rootfs["/etc/hostname"].provenance == "overlay:base"


def test_a_file_cannot_hide_a_populated_directory():
    rootfs = RootFS()
    rootfs.add_file("/etc/x/y", b"")
    with pytest.raises(UserError, match="replaces directory /etc/x"):
        rootfs.add_file("/etc/x", b"")
    rootfs.add_file("/file", b"")
    with pytest.raises(UserError, match="/file is a file"):
        rootfs.add_file("/file/below", b"")


def test_symlinks_resolve_inside_the_image_never_on_the_host():
    rootfs = RootFS()
    rootfs.add_file("/bin/busybox", b"ELF", 0o755)
    rootfs.add_symlink("/sbin/init", "/bin/busybox")
    rootfs.add_symlink("/lib", "usr/lib")
    rootfs.add_file("/usr/lib/libc.so", b"so")
    rootfs.add_symlink("/loop", "/loop")
    assert rootfs.resolve("/sbin/init").path == "/bin/busybox"
    assert rootfs.resolve("/lib/libc.so").path == "/usr/lib/libc.so"
    assert rootfs.resolve("/loop") is None
    assert rootfs.resolve("/missing") is None


def test_device_nodes_carry_their_numbers_and_type_bits():
    rootfs = RootFS()
    console = rootfs.add_device("/dev/console", EntryType.CHARDEV, 5, 1, 0o600)
    assert console.rdev == (5, 1)
    assert oct(console.st_mode) == "0o20600"
