"""The kernel loader and module resolver: small hand-made modules, then Debian's real kernel."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from fwgen.errors import FormatError, UserError
from fwgen.kernel import (
    MODULE_LIST,
    install_modules,
    load_kernel,
    read_banner_release,
    read_modinfo,
    resolve_modules,
)
from fwgen.rootfs import Entry, EntryType, RootFS

RELEASE = "6.1.0-99-test-arm64"
VERMAGIC = f"{RELEASE} SMP mod_unload modversions aarch64"


def make_module(modinfo: list[str]) -> bytes:
    """A minimal ELF64 little-endian relocatable object with a .modinfo section."""
    info = b"".join(item.encode() + b"\0" for item in modinfo)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    shoff = 64 + len(info) + len(shstrtab)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 183, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    section = struct.Struct("<IIQQQQIIQQ")
    sections = (
        section.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        + section.pack(1, 1, 2, 0, 64, len(info), 0, 0, 1, 0)  # PROGBITS, SHF_ALLOC
        + section.pack(10, 3, 0, 0, 64 + len(info), len(shstrtab), 0, 0, 1, 0)  # STRTAB
    )
    body = header + info + shstrtab
    return body + bytes(shoff - len(body)) + sections


def module_entry(path: str, name: str, depends: str = "", vermagic: str = VERMAGIC,
                 aliases: tuple[str, ...] = (), release: str = RELEASE) -> Entry:
    items = [f"alias={a}" for a in aliases] + [f"depends={depends}", f"name={name}", f"vermagic={vermagic}"]
    return Entry(f"/lib/modules/{release}/{path}", EntryType.FILE, 0o644, data=make_module(items))


def image_entry(release: str = RELEASE, banner: str | None = RELEASE, name: str | None = None,
                vermagic: str | None = VERMAGIC) -> Entry:
    text = b"MZ" + bytes(100)
    if banner:
        text += f"Linux version {banner} (builder@example) (gcc 12) #1 SMP\n".encode() + bytes(50)
        text += f"{banner}\0{banner} (builder@example)\0".encode()  # look-alikes of the vermagic
    if vermagic:
        text += b"\0" + vermagic.encode() + b"\0"
    return Entry(name or f"/boot/vmlinuz-{release}", EntryType.FILE, 0o644, data=text)


def small_tree() -> list[Entry]:
    return [
        image_entry(),
        Entry("/boot", EntryType.DIR, 0o755),
        module_entry("kernel/drivers/virtio/virtio.ko", "virtio"),
        module_entry("kernel/drivers/virtio/virtio_ring.ko", "virtio_ring"),
        module_entry("kernel/drivers/net/failover.ko", "failover"),
        module_entry("kernel/drivers/net/net_failover.ko", "net_failover", "failover"),
        module_entry("kernel/drivers/net/virtio_net.ko", "virtio_net", "virtio_ring,virtio,net_failover",
                     aliases=("virtio:d00000001v*",)),
        module_entry("kernel/fs/squashfs/squashfs.ko", "squashfs", aliases=("fs-squashfs",)),
        module_entry("kernel/drivers/block/virtio-blk.ko", "virtio-blk", "virtio,virtio_ring"),
        module_entry("kernel/fs/ext4/ext4.ko", "ext4", "jbd2,mbcache"),
        Entry(f"/lib/modules/{RELEASE}/modules.builtin", EntryType.FILE, 0o644,
              data=b"kernel/fs/jbd2/jbd2.ko\nkernel/fs/mbcache.ko\nkernel/fs/overlayfs/overlay.ko\n"),
    ]


def names(modules) -> list[str]:
    return [m.name for m in modules]


def assert_dependencies_first(modules) -> None:
    seen: set[str] = set()
    for module in modules:
        assert module.name not in seen, f"{module.name} twice"
        missing = [d for d in module.depends if d not in seen and d in {m.name for m in modules}]
        assert not missing, f"{module.name} comes before its dependencies {missing}"
        seen.add(module.name)


# -- hand-made modules -----------------------------------------------------------------


def test_modinfo_matches_binutils_readelf(tmp_path):
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    data = module_entry("x.ko", "virtio_net", "a,b", aliases=("one", "two")).data
    (tmp_path / "x.ko").write_bytes(data)
    dump = subprocess.run(["readelf", "-p", ".modinfo", str(tmp_path / "x.ko")],
                          capture_output=True, text=True, check=True).stdout
    strings = re.findall(r"^\s+\[\s*[0-9a-f]+\]\s+(.*)$", dump, re.M)
    info = read_modinfo(data)
    assert strings == [f"{k}={v}" for k, values in info.items() for v in values]
    assert info["alias"] == ["one", "two"] and info["depends"] == ["a,b"]


def test_load_kernel_finds_release_image_modules_and_builtins():
    kernel = load_kernel(small_tree(), source="test")
    assert kernel.release == RELEASE and kernel.image_path == f"/boot/vmlinuz-{RELEASE}"
    assert sorted(kernel.modules) == ["ext4", "failover", "net_failover", "squashfs", "virtio",
                                      "virtio_blk", "virtio_net", "virtio_ring"]
    assert kernel.modules["virtio_blk"].path == "kernel/drivers/block/virtio-blk.ko"
    assert kernel.modules["virtio_net"].depends == ("virtio_ring", "virtio", "net_failover")
    assert kernel.builtin == {"jbd2", "mbcache", "overlay"}


def test_resolution_puts_dependencies_first_once_and_deterministically():
    kernel = load_kernel(small_tree(), source="test")
    order = resolve_modules(kernel, ["virtio-blk", "squashfs", "virtio_net", "overlay", "virtio"])
    assert names(order) == ["virtio", "virtio_ring", "virtio_blk", "squashfs", "failover",
                            "net_failover", "virtio_net"]
    assert_dependencies_first(order)
    assert names(resolve_modules(kernel, ["fs-squashfs"])) == ["squashfs"]  # an exact alias
    assert names(resolve_modules(kernel, ["ext4"])) == ["ext4"]  # built-in deps are skipped


def test_unknown_module_suggests_a_near_name():
    kernel = load_kernel(small_tree(), source="test")
    with pytest.raises(UserError, match=r"no module 'virtio_nett' in kernel 6\.1\.0-99-test-arm64") as e:
        resolve_modules(kernel, ["virtio_nett"])
    assert "did you mean 'virtio_net'" in str(e.value)


def test_missing_dependency_and_cycle_are_explained():
    tree = small_tree() + [module_entry("extra/a.ko", "a", "b"), module_entry("extra/b.ko", "b", "a"),
                           module_entry("extra/c.ko", "c", "nowhere")]
    kernel = load_kernel(tree, source="test")
    with pytest.raises(UserError, match=r"cycle: a -> b -> a"):
        resolve_modules(kernel, ["a"])
    with pytest.raises(UserError, match=r"module c depends on nowhere, which is not there"):
        resolve_modules(kernel, ["c"])


@pytest.mark.parametrize("vermagic,message", ids=["release", "flags"], argvalues=[
    (VERMAGIC.replace("99", "98"), r"module failover .* built for kernel '6\.1\.0-98-test-arm64', not '6\.1\.0-99-test-arm64'"),
    (VERMAGIC.replace("mod_unload ", ""), r"module failover .* has vermagic '6\.1\.0-99-test-arm64 SMP modversions aarch64' but the kernel's is '6\.1\.0-99-test-arm64 SMP mod_unload"),
])
def test_foreign_vermagic_is_refused(vermagic, message):
    tree = [module_entry("kernel/drivers/net/failover.ko", "failover", vermagic=vermagic)
            if e.path.endswith("/failover.ko") else e for e in small_tree()]
    kernel = load_kernel(tree, source="test")
    assert kernel.vermagic == VERMAGIC
    with pytest.raises(UserError, match=message):
        resolve_modules(kernel, ["virtio_net"])
    assert names(resolve_modules(kernel, ["squashfs"])) == ["squashfs"]


def test_without_the_image_vermagic_the_modules_majority_decides():
    odd = VERMAGIC.replace("modversions ", "")
    tree = [image_entry(vermagic=None) if e.path.startswith("/boot/vmlinuz") else
            module_entry("kernel/drivers/net/failover.ko", "failover", vermagic=odd)
            if e.path.endswith("/failover.ko") else e for e in small_tree()]
    kernel = load_kernel(tree, source="test")
    assert kernel.vermagic is None
    with pytest.raises(UserError, match=r"module failover .* but the kernel's modules have '.*modversions aarch64'"):
        resolve_modules(kernel, ["net_failover"])


def test_compressed_modules_are_stored_decompressed():
    plain = module_entry("kernel/fs/squashfs/squashfs.ko", "squashfs")
    xz = replace(plain, path=plain.path + ".xz", data=lzma.compress(plain.data, check=lzma.CHECK_CRC32))
    gz = module_entry("kernel/drivers/net/failover.ko", "failover")
    gz = replace(gz, path="/usr" + gz.path + ".gz", data=gzip.compress(gz.data))
    kernel = load_kernel([image_entry(), xz, gz], source="test")
    assert kernel.modules["squashfs"].path == "kernel/fs/squashfs/squashfs.ko"
    assert kernel.modules["squashfs"].data == plain.data
    assert kernel.modules["failover"].path == "kernel/drivers/net/failover.ko"


def test_release_disagreements_are_refused():
    with pytest.raises(UserError, match=r"named for release 6\.1\.0-99-test-arm64 but its banner says 6\.1\.0-7-x"):
        load_kernel([image_entry(banner="6.1.0-7-x")], source="test")
    with pytest.raises(UserError, match=r"is release 6\.1\.0-99-test-arm64 but the modules are for 5\.10\.0-1"):
        load_kernel([image_entry(), module_entry("kernel/a.ko", "a", release="5.10.0-1")], source="test")
    with pytest.raises(UserError, match="no kernel image found"):
        load_kernel([module_entry("kernel/a.ko", "a")], source="test")
    # A vendor's bare "Image": the release comes from the banner.
    vendor = load_kernel([image_entry(name="/Image"), module_entry("kernel/a.ko", "a")], source="vendor")
    assert vendor.release == RELEASE


def test_banner_is_found_inside_a_compressed_image():
    inner = b"\0" * 1000 + f"Linux version {RELEASE} (x@y) (gcc)".encode()
    assert read_banner_release(gzip.compress(inner)) == RELEASE
    assert read_banner_release(b"decompressor stub" + lzma.compress(inner, check=lzma.CHECK_CRC32)) == RELEASE
    assert read_banner_release(b"Linux version %s (%s)") is None


def test_a_broken_module_is_a_format_error():
    with pytest.raises(FormatError, match=r"kernel/bad\.ko: not an ELF kernel module"):
        load_kernel([image_entry(), Entry(f"/lib/modules/{RELEASE}/kernel/bad.ko", EntryType.FILE, 0o644,
                                          data=b"not an elf")], source="test")


def test_install_modules_writes_files_and_the_load_list():
    kernel = load_kernel(small_tree(), source="test")
    order = resolve_modules(kernel, ["virtio_net"])
    rootfs = RootFS()
    install_modules(rootfs, kernel, order, provenance="deb:linux-image-test")
    listed = rootfs[MODULE_LIST].data.decode().splitlines()
    assert listed == [f"/lib/modules/{RELEASE}/{m.path}" for m in order]
    for module, path in zip(order, listed, strict=True):
        assert rootfs[path].data == module.data
        assert rootfs[path].provenance == "deb:linux-image-test"


# -- Debian's real kernel (network) ----------------------------------------------------


@pytest.fixture(scope="session")
def cloud_kernel_entries(cache_dir) -> tuple[str, list[Entry]]:
    """The files of bookworm's current linux-image-<release>-cloud-arm64, via fwgen.fetch."""
    from fwgen.arch import Arch
    from fwgen.board import Feed
    from fwgen.fetch import Cache, fetch_packages, read_package_entries

    feeds = [Feed("debian", "deb", "http://deb.debian.org/debian", suite="bookworm")]
    cache = Cache(cache_dir)
    meta = "linux-image-cloud-arm64"
    [fetched] = fetch_packages(feeds, Arch.AARCH64, [meta], nodeps=[meta], cache=cache)
    image_package = next(r.name for group in fetched.package.depends for r in group
                         if r.name.startswith("linux-image-6."))
    [fetched] = fetch_packages(feeds, Arch.AARCH64, [image_package], nodeps=[image_package], cache=cache)
    return image_package, list(read_package_entries(fetched.path))


@pytest.fixture(scope="session")
def cloud_kernel(cloud_kernel_entries):
    name, entries = cloud_kernel_entries
    return load_kernel(entries, source=f"deb:{name}")


@pytest.mark.network
def test_real_kernel_release_agrees_with_package_banner_and_modules(cloud_kernel_entries, cloud_kernel):
    name, _ = cloud_kernel_entries
    kernel = cloud_kernel
    assert name == f"linux-image-{kernel.release}"
    assert kernel.image_path == f"/boot/vmlinuz-{kernel.release}"
    assert read_banner_release(kernel.image) == kernel.release
    assert len(kernel.modules) > 500
    assert "ext4" in kernel.builtin  # cloud-arm64 builds ext4 in


@pytest.mark.network
def test_real_kernel_resolves_boot_modules_in_dependency_order(cloud_kernel):
    order = resolve_modules(cloud_kernel, ["virtio_blk", "squashfs", "virtio_net", "overlay"])
    assert_dependencies_first(order)
    found = names(order)
    assert found.index("failover") < found.index("net_failover") < found.index("virtio_net")
    assert found.index("virtio") < found.index("virtio_ring") < found.index("virtio_blk")
    assert {"squashfs", "overlay"} <= set(found)
    assert {m.vermagic for m in order} == {cloud_kernel.vermagic}, "the image's own vermagic"
    assert order[0].vermagic.startswith(cloud_kernel.release + " ")
    assert names(resolve_modules(cloud_kernel, ["ext4", "squashfs"])) == ["squashfs"]
    assert resolve_modules(cloud_kernel, ["virtio_net", "overlay", "squashfs", "virtio_blk"])[-1].name == "virtio_blk"


@pytest.mark.network
def test_real_modinfo_agrees_with_binutils_readelf(cloud_kernel, tmp_path):
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    for name in ("virtio_net", "net_failover", "squashfs"):
        module = cloud_kernel.modules[name]
        path = tmp_path / f"{name}.ko"
        path.write_bytes(module.data)
        dump = subprocess.run(["readelf", "-p", ".modinfo", str(path)], capture_output=True, text=True,
                              check=True).stdout
        fields = dict(s.split("=", 1) for s in re.findall(r"^\s+\[\s*[0-9a-f]+\]\s+(\S+=.*)$", dump, re.M))
        assert fields["vermagic"] == module.vermagic
        assert tuple(d for d in fields["depends"].split(",") if d) == module.depends


@pytest.mark.network
def test_real_kernel_unknown_module_suggests(cloud_kernel):
    with pytest.raises(UserError, match="did you mean 'squashfs'"):
        resolve_modules(cloud_kernel, ["squashfss"])


@pytest.mark.network
@pytest.mark.parametrize("forgery", ["release", "flags"])
def test_real_module_with_forged_vermagic_is_rejected(cloud_kernel_entries, cloud_kernel, forgery):
    name, entries = cloud_kernel_entries
    release = cloud_kernel.release
    old = f"vermagic={release} SMP mod_unload ".encode()
    # Same length, so the ELF stays intact: only the .modinfo string changes.
    if forgery == "release":
        forged_release = release[:-1] + ("X" if release[-1] != "X" else "Y")
        new = old.replace(release.encode(), forged_release.encode())
        message = rf"module net_failover .* built for kernel '{re.escape(forged_release)}'"
    else:
        new = old.replace(b"mod_unload", b"mod_unl0ad")
        message = r"module net_failover .* has vermagic '.*mod_unl0ad.*' but the kernel's is '.*mod_unload"

    def forge(entry: Entry) -> Entry:
        if not entry.path.endswith("/net_failover.ko"):
            return entry
        assert entry.data.count(old) == 1
        return replace(entry, data=entry.data.replace(old, new))

    kernel = load_kernel([forge(e) for e in entries], source=f"deb:{name}")
    with pytest.raises(UserError, match=message):
        resolve_modules(kernel, ["virtio_net"])
    assert "net_failover" not in names(resolve_modules(kernel, ["virtio_blk", "squashfs"]))


@pytest.mark.network
def test_real_modules_install_into_an_initramfs(cloud_kernel, tmp_path):
    from fwgen.images.cpio import read_initramfs, write_initramfs

    order = resolve_modules(cloud_kernel, ["virtio_blk", "squashfs"])
    rootfs = RootFS()
    install_modules(rootfs, cloud_kernel, order, provenance="test")
    path = tmp_path / "initrd.img"
    write_initramfs(rootfs, path, mtime=0)
    members = {m.name: m for m in read_initramfs(path)}
    listed = members[MODULE_LIST.lstrip("/")].data.decode().split()
    assert [Path(p).name for p in listed] == [Path(m.path).name for m in order]
    for module, path_in_image in zip(order, listed, strict=True):
        assert members[path_in_image.lstrip("/")].data == module.data
