#!/usr/bin/env python3
"""Build a tiny bootable PRAGMA-style virtual cluster image from Debian packages only.

The result is a pragma repository entry that the kvm driver can boot::

    REPO/vcdb.txt                 one line  NAME,NAME/NAME.xml  (added or updated)
    REPO/NAME/NAME.xml            the cluster description (<vc version="0.1">)
    REPO/NAME/NAME.img            raw disk, DOS label, partition 1 = ext4 root (/)
    REPO/NAME/vmlinuz             the Debian kernel
    REPO/NAME/initrd.img          busybox initramfs: loads virtio/ACPI modules,
                                  mounts /dev/vda1, switch_root
    REPO/NAME/.build-stamp.json   what was built from (for --reuse)

The root file system holds busybox (from ``busybox-static``), busybox init, an
``acpid`` that powers off cleanly on the ACPI power button, and
``/usr/sbin/pragma-vcout`` (``guest/vcout-config.sh``), which reads
``/root/vc-out.xml`` (vc-out format 1 or 2) at boot, configures the node and
reports on the serial console (``PRAGMA-VCOUT:``, ``PRAGMA-HOSTS:``,
``PRAGMA-READY``, ``PRAGMA-REACH:`` lines).

No root-only tricks: no mount, loop device, chroot or bootloader. The .debs are
fetched with ``apt-get download`` (running ``apt-get update`` first when the
package lists are missing) and unpacked with ``dpkg-deb -x`` into a cache; the
file system is made with ``mkfs.ext4 -d``, partitioned with ``sfdisk`` on the
disk file and copied in sparsely; the initramfs cpio is written here in Python
(so its files belong to root and it has a /dev/console node without mknod).

Usage::

    python3 examples/image-builder/build_image.py --output REPO [--name pragma-tiny]
        [--disk-size 64M] [--flavour cloud-amd64] [--cache DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("pragma.image_builder")

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
#: Guest files and where they go in the root file system, with their mode.
ROOT_FILES = {
    "vcout-config.sh": ("usr/sbin/pragma-vcout", 0o755),
    "rcS": ("etc/init.d/rcS", 0o755),
    "rcK": ("etc/init.d/rcK", 0o755),
    "inittab": ("etc/inittab", 0o644),
    "acpi-power": ("etc/acpi/PWRF/00000080", 0o755),
}
#: Kernel modules the initramfs loads (with their dependencies) when they are not built in.
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "button", "evdev")
BUSYBOX_PACKAGE = "busybox-static"
DEFAULT_NAME = "pragma-tiny"
DEFAULT_FLAVOUR = "cloud-amd64"
DEFAULT_DISK_SIZE = 64 * 1024 * 1024
PARTITION_START = 1024 * 1024  # sector 2048
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"
STAMP_FILE = ".build-stamp.json"
#: The kernel command line written into the cluster description.
CMDLINE = "console=ttyS0,115200 root=/dev/vda1 rootwait=30 quiet"
MEMORY_MIB = 192
_SIZE = re.compile(r"(\d+)([KMG]?)(i?B)?", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9._+\-]*")
_SAFE_VERSION = re.compile(r"[^A-Za-z0-9.+~_-]")


class BuildError(Exception):
    """A problem that stops the build; its text is the one line the user sees."""


# --------------------------------------------------------------------------- commands


def run(argv: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, input: bytes | None = None) -> str:
    """Run a command (no shell); its stdout, or a BuildError with its stderr."""
    LOG.debug("run: %s", " ".join(map(str, argv)))
    try:
        done = subprocess.run(list(map(str, argv)), cwd=cwd, input=input, capture_output=True, check=False)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found: install it (see examples/image-builder/README.md)") from None
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()
        raise BuildError(f"{Path(str(argv[0])).name} failed (exit {done.returncode}): {' / '.join(detail[-3:])}")
    return done.stdout.decode(errors="replace")


# --------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.name}_{_SAFE_VERSION.sub('_', self.version)}"


def _apt_show(name: str) -> dict[str, str]:
    text = run(["apt-cache", "show", "--no-all-versions", name])
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # first stanza only
        if line[0] != " " and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if "Version" not in fields:
        raise BuildError(f"apt-cache knows no package {name}")
    return fields


def apt_show(name: str, *, updated: list[bool]) -> dict[str, str]:
    """``apt-cache show`` of ``name``'s candidate; runs ``apt-get update`` once if it is unknown."""
    try:
        return _apt_show(name)
    except BuildError:
        if updated[0]:
            raise
    LOG.info("package lists lack %s: running apt-get update", name)
    updated[0] = True
    run(["apt-get", "update", "-q"])
    return _apt_show(name)


def resolve_packages(flavour: str, updated: list[bool]) -> tuple[Package, Package]:
    """The kernel image package behind ``linux-image-<flavour>`` and busybox-static, with versions.

    ``updated[0]`` says whether ``apt-get update`` already ran (it runs at most once).
    """
    meta = apt_show(f"linux-image-{flavour}", updated=updated)
    kernel_name = None
    for alternative in re.split(r"[,|]", meta.get("Depends", "")):
        word = alternative.strip().split(" ")[0]
        if word.startswith("linux-image-"):
            kernel_name = word
            break
    if kernel_name is None:
        raise BuildError(f"linux-image-{flavour} does not depend on a linux-image-* package")
    kernel = apt_show(kernel_name, updated=updated)
    busybox = apt_show(BUSYBOX_PACKAGE, updated=updated)
    return Package(kernel_name, kernel["Version"]), Package(BUSYBOX_PACKAGE, busybox["Version"])


def fetch(package: Package, cache: Path) -> Path:
    """The unpacked tree of ``package`` in the cache (downloaded and unpacked once)."""
    tree = cache / "unpacked" / package.key
    if tree.is_dir():
        return tree
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = debs / f"{package.key}.deb"
    if not deb.is_file():
        with tempfile.TemporaryDirectory(dir=debs) as tmp:
            LOG.info("downloading %s %s", package.name, package.version)
            run(["apt-get", "download", "-q", f"{package.name}={package.version}"], cwd=Path(tmp))
            got = list(Path(tmp).glob("*.deb"))
            if len(got) != 1:
                raise BuildError(f"apt-get download {package.name} gave {len(got)} files")
            os.replace(got[0], deb)
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp_tree = Path(tempfile.mkdtemp(prefix=f".{package.key}.", dir=tree.parent))
    try:
        run(["dpkg-deb", "-x", deb, tmp_tree])
        os.replace(tmp_tree, tree)
    except BaseException:
        shutil.rmtree(tmp_tree, ignore_errors=True)
        raise
    return tree


# --------------------------------------------------------------------------- kernel modules


_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise BuildError(f"{path.name}: compressed kernel modules other than .xz are not supported")


def module_load_order(module_dir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """Modules to insmod, dependencies first: ``(name, path)``; built-in ones are left out."""
    builtin_file = module_dir / "modules.builtin"
    builtin = set()
    if builtin_file.is_file():
        builtin = {_module_name(Path(line.strip())) for line in builtin_file.read_text().splitlines() if line.strip()}
    index = {_module_name(p): p for p in module_dir.rglob("*.ko*") if p.is_file()}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise BuildError(f"kernel module dependency loop: {' -> '.join(chain + (name,))}")
        path = index.get(name)
        if path is None:
            raise BuildError(f"kernel module {name} is neither built in nor in {module_dir}")
        match = _DEPENDS.search(_module_bytes(path))
        for dep in (match.group(1).decode().split(",") if match else []):
            if dep:
                visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, path))

    for name in wanted:
        visit(name, ())
    return order


# --------------------------------------------------------------------------- cpio (newc)


class Cpio:
    """A ``newc`` cpio archive written in memory: every entry owned by root, fixed mtime."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\x00"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._ino += 1
        self._out.write(header + encoded)
        self._out.write(b"\x00" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data)
        self._out.write(b"\x00" * (-len(data) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._out.write(b"\x00" * (-self._out.tell() % 512))
        return self._out.getvalue()


def build_initramfs(busybox: Path, applets: list[str], modules: list[tuple[str, Path]], module_dir: Path) -> bytes:
    """The gzipped initramfs: busybox, /init, the modules and their load order."""
    cpio = Cpio()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", (GUEST / "init").read_bytes(), 0o755)
    made: set[str] = {"lib/modules"}
    order = []
    for _name, path in modules:
        relative = path.relative_to(module_dir).as_posix()
        relative = relative.removesuffix(".xz")
        parent = ""
        for part in relative.split("/")[:-1]:
            parent = f"{parent}/{part}" if parent else part
            if f"lib/modules/{parent}" not in made:
                cpio.directory(f"lib/modules/{parent}")
                made.add(f"lib/modules/{parent}")
        cpio.file(f"lib/modules/{relative}", _module_bytes(path))
        order.append(relative)
    cpio.file("etc/modules.order", ("\n".join(order) + "\n").encode())
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as stream:
        stream.write(cpio.finish())
    return out.getvalue()


# --------------------------------------------------------------------------- root file system and disk


def busybox_applets(busybox: Path) -> list[str]:
    applets = [a for a in run([busybox, "--list"]).split() if re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", a)]
    return sorted(set(applets) - {"busybox"})


def make_root_tree(root: Path, busybox: Path, applets: list[str]) -> None:
    """The root file system's tree: busybox userland, init scripts, the vc-out configurator."""
    for directory in (
        "bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "etc/acpi/PWRF", "dev", "proc", "sys",
        "run", "tmp", "var/log", "mnt", "root",
    ):  # fmt: skip
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin/init").symlink_to("../bin/busybox")
    for source, (target, mode) in ROOT_FILES.items():
        shutil.copyfile(GUEST / source, root / target)
        (root / target).chmod(mode)
    files = {
        "etc/hostname": "pragma\n",
        "etc/hosts": "127.0.0.1 localhost\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": "root:x:0:\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\n",
        "etc/profile": "export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nexport PS1='\\h:\\w\\$ '\n",
        "etc/pragma-image": "pragma tiny cluster image (examples/image-builder)\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "etc/shadow").chmod(0o600)


def make_disk(disk: Path, root_tree: Path, size: int, work: Path, fs_uuid: str) -> None:
    """A raw disk of ``size`` bytes: DOS label, partition 1 (from sector 2048 to the end) ext4 of ``root_tree``."""
    fs = work / "root.ext4"
    fs_size = size - PARTITION_START
    with open(fs, "wb") as stream:
        stream.truncate(fs_size)
    run(
        ["mkfs.ext4", "-q", "-F", "-L", "pragma-root", "-U", fs_uuid, "-E", "root_owner=0:0",
         "-d", root_tree, fs]
    )  # fmt: skip
    with open(disk, "wb") as stream:
        stream.truncate(size)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", disk], input=b"label: dos\nstart=2048, type=83\n")
    chunk = 1024 * 1024
    zero = bytes(chunk)
    with open(fs, "rb") as source, open(disk, "r+b") as target:
        offset = 0
        while block := source.read(chunk):
            if block != zero[: len(block)]:
                target.seek(PARTITION_START + offset)
                target.write(block)
            offset += len(block)
    fs.unlink()


# --------------------------------------------------------------------------- description


def description_xml(name: str, image: str, sha256: str) -> bytes:
    """The cluster description: the same image for the frontend and the computes (vc-out decides the role)."""
    root = ET.Element("vc", {"version": "0.1"})
    ET.SubElement(root, "virtualization", {"engine": "kvm", "type": "hvm", "arch": "x86_64"})
    for role in ("frontend", "compute"):
        domain = ET.SubElement(ET.SubElement(root, role), "domain", {"type": "kvm"})
        ET.SubElement(domain, "name").text = f"{name}-{role}"
        ET.SubElement(domain, "memory", {"unit": "MiB"}).text = str(MEMORY_MIB)
        ET.SubElement(domain, "vcpu").text = "1"
        os_el = ET.SubElement(domain, "os")
        ET.SubElement(os_el, "type", {"arch": "x86_64"}).text = "hvm"
        ET.SubElement(os_el, "kernel").text = KERNEL_FILE
        ET.SubElement(os_el, "initrd").text = INITRD_FILE
        ET.SubElement(os_el, "cmdline").text = CMDLINE
        features = ET.SubElement(domain, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(domain, "on_poweroff").text = "destroy"
        devices = ET.SubElement(domain, "devices")
        disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
        ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
        ET.SubElement(disk, "source", {"file": image, "sha256": sha256})
        ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
        iface = ET.SubElement(devices, "interface", {"type": "bridge"})
        ET.SubElement(iface, "model", {"type": "virtio"})
        serial = ET.SubElement(devices, "serial", {"type": "pty"})
        ET.SubElement(serial, "target", {"port": "0"})
        console = ET.SubElement(devices, "console", {"type": "pty"})
        ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode").encode() + b"\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def update_vcdb(repository: Path, name: str, xml_relative: str) -> None:
    """Add or replace ``name`` in ``REPO/vcdb.txt`` (pragma_core.vcdb when installed, else a plain rewrite)."""
    vcdb = repository / "vcdb.txt"
    try:
        from pragma_core.vcdb import read_vcdb, write_vcdb  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # pragma-core not installed: keep other lines, replace ours
        lines = vcdb.read_text().splitlines() if vcdb.exists() else []
        kept = [line for line in lines if line.split(",", 1)[0].strip() != name]
        tmp = vcdb.with_name(f".{vcdb.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept + [f"{name},{xml_relative}"]))
        os.replace(tmp, vcdb)
        return
    entries: dict[str, Path | str] = dict(read_vcdb(vcdb, repository, missing_ok=True))
    entries[name] = xml_relative
    write_vcdb(vcdb, entries)


# --------------------------------------------------------------------------- build


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise BuildError(f"--disk-size {text!r}: use bytes or a number with K, M or G")
    size = int(match.group(1)) * 1024 ** " KMG".index((match.group(2) or " ").upper())
    if size < 16 * 1024 * 1024 or size % 512:
        raise BuildError(f"--disk-size {text!r}: at least 16M and a multiple of 512 bytes")
    return size


def recipe_hash() -> str:
    """A hash of this script and every guest file: a change in any of them means a rebuild."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(GUEST.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\x00" + path.read_bytes())
    return digest.hexdigest()


def build(
    repository: Path, name: str, size: int, flavour: str, cache: Path, reuse: bool, *, _updated: bool = False
) -> Path:
    """Build (or, with ``reuse``, keep when up to date) the image; return the cluster description path."""
    if not _NAME.fullmatch(name):
        raise BuildError(f"--name {name!r}: use letters, digits and '._-+', not starting with a dot")
    updated = [_updated]
    kernel_pkg, busybox_pkg = resolve_packages(flavour, updated)
    cluster = repository / name
    stamp = {
        "name": name,
        "disk_size": size,
        "packages": {kernel_pkg.name: kernel_pkg.version, busybox_pkg.name: busybox_pkg.version},
        "recipe": recipe_hash(),
    }
    outputs = [cluster / f"{name}.img", cluster / KERNEL_FILE, cluster / INITRD_FILE, cluster / f"{name}.xml"]
    stamp_path = cluster / STAMP_FILE
    if reuse and stamp_path.is_file() and all(p.is_file() for p in outputs):
        try:
            old = json.loads(stamp_path.read_text())
        except ValueError:
            old = None
        if old == stamp:
            LOG.info("%s is up to date (%s %s, %s %s)", cluster, kernel_pkg.name, kernel_pkg.version,
                     busybox_pkg.name, busybox_pkg.version)  # fmt: skip
            update_vcdb(repository, name, f"{name}/{name}.xml")
            return cluster / f"{name}.xml"
    try:
        kernel_tree = fetch(kernel_pkg, cache)
        busybox_tree = fetch(busybox_pkg, cache)
    except BuildError as exc:
        if updated[0]:
            raise
        # Stale package lists name versions the mirror no longer has: update once and start over.
        LOG.info("%s: running apt-get update and trying again", exc)
        run(["apt-get", "update", "-q"])
        updated[0] = True
        return build(repository, name, size, flavour, cache, reuse, _updated=True)
    vmlinuz = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
    module_dirs = sorted((kernel_tree / "lib/modules").iterdir()) if (kernel_tree / "lib/modules").is_dir() else []
    if len(vmlinuz) != 1 or len(module_dirs) != 1:
        raise BuildError(f"{kernel_pkg.name}: expected one boot/vmlinuz-* and one lib/modules/<version>")
    busybox = busybox_tree / "bin/busybox"
    if not busybox.is_file():
        raise BuildError(f"{busybox_pkg.name} has no bin/busybox")
    applets = busybox_applets(busybox)
    modules = module_load_order(module_dirs[0], MODULES)
    LOG.info("initramfs modules: %s", " ".join(n for n, _ in modules) or "(all built in)")

    repository.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=repository))
    try:
        root_tree = work / "root"
        make_root_tree(root_tree, busybox, applets)
        fs_uuid = str(uuid.UUID(hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:32]))
        make_disk(work / f"{name}.img", root_tree, size, work, fs_uuid)
        shutil.rmtree(root_tree)
        (work / INITRD_FILE).write_bytes(build_initramfs(busybox, applets, modules, module_dirs[0]))
        shutil.copyfile(vmlinuz[0], work / KERNEL_FILE)
        (work / f"{name}.xml").write_bytes(description_xml(name, f"{name}.img", sha256_of(work / f"{name}.img")))
        cluster.mkdir(parents=True, exist_ok=True)
        stamp_path.unlink(missing_ok=True)
        for output in outputs:
            os.replace(work / output.name, output)
        tmp_stamp = cluster / f".{STAMP_FILE}.tmp"
        tmp_stamp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_stamp, stamp_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    update_vcdb(repository, name, f"{name}/{name}.xml")
    LOG.info("built %s (%s %s, %s %s)", cluster, kernel_pkg.name, kernel_pkg.version,
             busybox_pkg.name, busybox_pkg.version)  # fmt: skip
    return cluster / f"{name}.xml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", type=Path, required=True, help="repository directory (vcdb.txt, NAME/)")
    parser.add_argument("--name", "-n", default=DEFAULT_NAME, help=f"image name [{DEFAULT_NAME}]")
    parser.add_argument("--disk-size", default="64M", help="raw disk size, sparse [64M]")
    parser.add_argument("--flavour", default=DEFAULT_FLAVOUR, help=f"Debian kernel flavour [{DEFAULT_FLAVOUR}]")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pragma-image-builder",
        help="where downloaded and unpacked .debs are kept [~/.cache/pragma-image-builder]",
    )
    parser.add_argument("--reuse", action="store_true", help="do nothing when the image is up to date")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        xml = build(args.output.resolve(), args.name, parse_size(args.disk_size), args.flavour,
                    args.cache.resolve(), args.reuse)  # fmt: skip
    except BuildError as exc:
        print(f"build_image: {exc}", file=sys.stderr)
        return 1
    print(xml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
