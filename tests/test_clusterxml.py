"""Cluster description XML: safe parsing, the schema, and the disk rewrite for clonezilla."""

from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pragma_core.clusterxml import MAX_DESCRIPTION_BYTES, parse_cluster_xml, replace_disk_source
from pragma_core.errors import FormatError, RepositoryError
from pragma_core.model import Checksum, Part

DATA = Path(__file__).parent / "data" / "clusters"

SHA_A = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MD5_A = "d41d8cd98f00b204e9800998ecf8427e"

# A minimal valid description; each bad-input test changes one fragment of it.
BASE = """<vc version="0.1">
  <virtualization engine="kvm" type="hvm" arch="x86_64"/>
  <frontend>
    <domain type="kvm">
      <name>fe</name>
      <memory>1048576</memory>
      <vcpu>2</vcpu>
      <devices>
        <disk type="file" device="disk">
          <driver name="qemu" type="raw"/>
          <source file="fe.img"/>
          <target dev="vda" bus="virtio"/>
          <file type="splited">
            <part>fe.img.aa</part>
            <part>fe.img.ab</part>
          </file>
        </disk>
      </devices>
    </domain>
  </frontend>
</vc>
"""


SPLIT_FILE = (
    '<file type="splited">\n            <part>fe.img.aa</part>\n            <part>fe.img.ab</part>\n          </file>'
)


def write_xml(tmp_path: Path, text: str, name: str = "cluster.xml") -> Path:
    directory = tmp_path / "demo"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def variant(old: str, new: str) -> str:
    """BASE with ``old`` replaced; fails loudly if ``old`` is not there (no vacuous tests)."""
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def parse_error(tmp_path: Path, text: str) -> FormatError:
    path = write_xml(tmp_path, text)
    with pytest.raises(FormatError) as info:
        parse_cluster_xml(path, "demo")
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return info.value


def test_base_description_is_valid(tmp_path: Path) -> None:
    description = parse_cluster_xml(write_xml(tmp_path, BASE), "demo")
    assert description.frontend.disk.processor == "splited"


# --------------------------------------------------------------- unsafe or malformed XML


def test_billion_laughs_is_refused_quickly_without_expansion() -> None:
    path = DATA / "billion-laughs.xml"
    started = time.monotonic()
    with pytest.raises(FormatError) as info:
        parse_cluster_xml(path, "demo")
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        f"{path} line 2: DTDs are not allowed in cluster descriptions (<!DOCTYPE vc>); "
        "remove the DOCTYPE and any entity declarations"
    )


def test_external_entity_is_refused_and_the_file_is_never_read() -> None:
    path = DATA / "external-entity.xml"
    with pytest.raises(FormatError) as info:
        parse_cluster_xml(path, "demo")
    assert "DTDs are not allowed" in str(info.value)
    assert "root:" not in str(info.value)


def test_doctype_with_remote_dtd_is_refused() -> None:
    path = DATA / "doctype.xml"
    with pytest.raises(FormatError, match=r"doctype\.xml line 2: DTDs are not allowed"):
        parse_cluster_xml(path, "demo")


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("<vcpu>2</vcpu>", "<vcpu>2</vcpux>"))
    assert error.line == 7
    assert "line 7: malformed XML: mismatched tag" in str(error)


def test_empty_file_is_malformed(tmp_path: Path) -> None:
    error = parse_error(tmp_path, "")
    assert "malformed XML: no element found" in str(error)


def test_oversized_description_is_refused_before_parsing(tmp_path: Path) -> None:
    text = BASE.replace("</vc>", "<!--" + "x" * MAX_DESCRIPTION_BYTES + "--></vc>")
    error = parse_error(tmp_path, text)
    assert "larger than" in str(error)


def test_missing_description_is_a_repository_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="cluster description does not exist"):
        parse_cluster_xml(tmp_path / "absent.xml", "demo")


# --------------------------------------------------------------- schema errors


def test_missing_virtualization_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<virtualization engine="kvm" type="hvm" arch="x86_64"/>', ""))
    assert 'missing <virtualization arch="x86_64"/> in <vc> (virtual image demo)' in str(error)


def test_wrong_architecture_uses_the_legacy_message(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('arch="x86_64"', 'arch="i386"'))
    assert str(error).endswith("line 2: Unsupported VM architecture 'i386' for virtual image demo")


def test_virtualization_without_arch_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant(' arch="x86_64"', ""))
    assert "<virtualization> has no arch attribute" in str(error)


def test_missing_frontend_is_refused(tmp_path: Path) -> None:
    text = variant("<frontend>", "<compute>").replace("</frontend>", "</compute>")
    error = parse_error(tmp_path, text)
    assert "line 1: missing <frontend> in <vc>" in str(error)


def test_two_frontends_are_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("</vc>", "<frontend/></vc>"))
    assert "more than one <frontend> in <vc>" in str(error)


def test_frontend_without_domain_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("</frontend>", "</frontend><compute/>"))
    assert "missing <domain> in <compute>" in str(error)


def test_missing_disk_is_refused(tmp_path: Path) -> None:
    text = variant('<disk type="file" device="disk">', '<disk type="file" device="cdrom">')
    error = parse_error(tmp_path, text)
    assert "line 4: <frontend> domain has no <devices>/<disk> for the node image" in str(error)


def test_missing_source_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<source file="fe.img"/>', ""))
    assert "line 9: <frontend> disk has no <source file=" in str(error)


def test_zfs_volume_source_is_refused_with_an_explanation(tmp_path: Path) -> None:
    zfs = '<source volume="biolinux-vol" pool="tank" host="nas-0-0"/>'
    error = parse_error(tmp_path, variant('<source file="fe.img"/>', zfs))
    assert "is a ZFS volume" in str(error)
    assert "pragma stages file images only" in str(error)


def test_source_without_file_attribute_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<source file="fe.img"/>', '<source dev="/dev/sdb"/>'))
    assert "<source> has no file attribute" in str(error)


def test_unsupported_disk_format_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('type="raw"', 'type="vmdk"'))
    assert "line 10: <frontend> disk format 'vmdk' is not supported (use raw or qcow2)" in str(error)


def test_file_without_type_is_a_format_error_not_a_crash(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<file type="splited">', "<file>"))
    assert error.line == 13
    assert "<file> in <frontend> has no type attribute" in str(error)


def test_split_type_without_parts_is_refused(tmp_path: Path) -> None:
    text = variant("<part>fe.img.aa</part>\n            <part>fe.img.ab</part>", "")
    error = parse_error(tmp_path, text)
    assert "Check <part> definition for disk image fe.img" in str(error)


def test_part_escaping_the_cluster_directory_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("<part>fe.img.ab</part>", "<part>../../etc/passwd</part>"))
    assert error.line == 15
    assert "part '../../etc/passwd' escapes the directory" in str(error)


def test_absolute_part_outside_the_directory_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("<part>fe.img.ab</part>", "<part>/etc/shadow</part>"))
    assert "part '/etc/shadow' escapes the directory" in str(error)


def test_absolute_source_outside_the_directory_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<source file="fe.img"/>', '<source file="/etc/passwd"/>'))
    assert "line 11: disk image '/etc/passwd' escapes the directory" in str(error)


def test_source_escaping_with_dot_dot_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant('<source file="fe.img"/>', '<source file="sub/../../x.img"/>'))
    assert "escapes the directory" in str(error)


def test_empty_part_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("<part>fe.img.ab</part>", "<part>  </part>"))
    assert "empty <part>" in str(error)


def test_part_listed_twice_is_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("<part>fe.img.ab</part>", "<part>./fe.img.aa</part>"))
    assert "part './fe.img.aa' is listed twice" in str(error)


def test_two_file_elements_are_refused(tmp_path: Path) -> None:
    error = parse_error(tmp_path, variant("</domain>", '</domain><file type="gzip"><part>x.gz</part></file>'))
    assert "more than one <file> in <frontend>" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<part>fe.img.aa</part>", f'<part sha256="{SHA_A[:-1]}">fe.img.aa</part>', "<part> sha256 checksum"),
        ("<part>fe.img.aa</part>", f'<part sha256="{"z" * 64}">fe.img.aa</part>', "must be 64 hexadecimal digits"),
        (
            "<part>fe.img.aa</part>",
            '<part md5="abc">fe.img.aa</part>',
            "<part> md5 checksum 'abc' must be 32 hexadecimal",
        ),
        ('<file type="splited">', '<file type="splited" sha256="00">', "<file> sha256 checksum '00' must be 64"),
        ('<source file="fe.img"/>', f'<source file="fe.img" md5="{SHA_A}"/>', "<source> md5 checksum"),
    ],
)
def test_bad_checksum_hex_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    error = parse_error(tmp_path, variant(old, new))
    assert message in str(error)


def test_conflicting_image_checksums_are_refused(tmp_path: Path) -> None:
    text = variant('<source file="fe.img"/>', f'<source file="fe.img" sha256="{SHA_A}"/>')
    text = text.replace('<file type="splited">', f'<file type="splited" sha256="{"0" * 64}">')
    error = parse_error(tmp_path, text)
    assert "<source> and <file> give different checksums" in str(error)


@pytest.mark.parametrize("size", ["-1", "1k", "", "1.5"])
def test_bad_part_size_is_refused(tmp_path: Path, size: str) -> None:
    error = parse_error(tmp_path, variant("<part>fe.img.aa</part>", f'<part size="{size}">fe.img.aa</part>'))
    assert f"<part> size must be a number of bytes, not {size!r}" in str(error)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('<vc version="0.1">', '<vc version="0.1" vcout-format="3">', "<vc vcout-format> must be one of 1, 2, not '3'"),
        ('<vc version="0.1">', '<vc version="0.1" vcout-format="">', "must be one of 1, 2, not ''"),
        ("<frontend>", '<vcout format="v1"/><frontend>', "<vcout format> must be one of 1, 2, not 'v1'"),
        (
            '<vc version="0.1">',
            '<vc version="0.1" vcout-format="1"><vcout format="2"/>',
            "conflicting vc-out formats 1 and 2",
        ),
    ],
)
def test_bad_vcout_format_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    error = parse_error(tmp_path, variant(old, new))
    assert message in str(error)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<vcpu>2</vcpu>", "<vcpu>two</vcpu>", "<frontend> <vcpu> must be a positive whole number, not 'two'"),
        ("<vcpu>2</vcpu>", "<vcpu>0</vcpu>", "<vcpu> must be a positive whole number, not '0'"),
        ("<memory>1048576</memory>", "<memory>-5</memory>", "<memory> must be a positive whole number"),
        ("<memory>1048576</memory>", '<memory unit="furlongs">1</memory>', "<memory> has an unknown unit 'furlongs'"),
        ("<vcpu>2</vcpu>", "<vcpu>100000</vcpu>", "<frontend> <vcpu> asks for 100000 vCPUs, more than 4096"),
        ("<memory>1048576</memory>", '<memory unit="EiB">999999999999999999</memory>',
         "<frontend> <memory> asks for more than 64 TiB"),
    ],
)
def test_bad_vcpu_or_memory_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    error = parse_error(tmp_path, variant(old, new))
    assert message in str(error)


# --------------------------------------------------------------- good descriptions


def test_reference_example_gzip_split_frontend_and_raw_compute() -> None:
    description = parse_cluster_xml(DATA / "demo.xml", "demo")
    assert description.name == "demo"
    assert description.path == DATA / "demo.xml"
    assert description.directory == DATA
    assert description.arch == "x86_64"
    assert description.vcout_format is None

    frontend = description.frontend
    assert frontend.role == "frontend"
    assert frontend.disk.source == "demo-frontend.img"
    assert frontend.disk.format == "raw"
    assert frontend.disk.processor == "splited_gzip"
    assert frontend.disk.parts == (Part(name="demo-frontend.img.gz.aa"), Part(name="demo-frontend.img.gz.ab"))
    assert frontend.disk.checksum is None
    assert (frontend.vcpus, frontend.memory_mib) == (1, 2048)

    assert description.compute is not None
    compute = description.compute
    assert compute.role == "compute"
    assert (compute.disk.source, compute.disk.processor, compute.disk.parts) == ("demo-compute.img", "raw", ())
    assert description.compute_template is compute


def test_domain_xml_is_the_domain_element_as_text() -> None:
    description = parse_cluster_xml(DATA / "demo.xml", "demo")
    domain = ET.fromstring(description.frontend.domain_xml)
    assert domain.tag == "domain"
    assert domain.get("type") == "kvm"
    assert domain.findtext("name") == "demo-frontend"
    assert [i.find("source").get("bridge") for i in domain.iter("interface")] == ["eth0.2", "eth1"]
    assert ET.fromstring(description.compute.domain_xml).findtext("name") == "demo-compute"


def test_frontend_only_description_uses_the_frontend_for_computes() -> None:
    description = parse_cluster_xml(DATA / "frontend-only.xml", "tiny")
    assert description.compute is None
    assert description.compute_template is description.frontend
    assert description.vcout_format == 1
    # The cdrom before the image disk is skipped.
    assert description.frontend.disk.source == "images/tiny.img"
    assert (description.frontend.vcpus, description.frontend.memory_mib) == (2, 256)


def test_kernel_boot_settings_stay_in_domain_xml() -> None:
    description = parse_cluster_xml(DATA / "frontend-only.xml", "tiny")
    os_element = ET.fromstring(description.frontend.domain_xml).find("os")
    assert os_element is not None
    assert os_element.findtext("kernel") == "vmlinuz"
    assert os_element.findtext("initrd") == "initrd.img"
    assert os_element.findtext("cmdline") == "console=ttyS0 quiet"


def test_qcow2_images_are_accepted_and_used_in_place() -> None:
    description = parse_cluster_xml(DATA / "qcow2.xml", "centos7")
    assert description.vcout_format == 2  # from <vcout format="2"/>
    assert description.frontend.disk.format == "qcow2"
    assert description.frontend.disk.processor == "raw"
    assert description.frontend.memory_mib == 4096
    assert description.frontend.vcpus is None
    compute = description.compute
    assert compute is not None
    assert (compute.disk.format, compute.disk.processor) == ("qcow2", "gzip")
    assert compute.memory_mib is None


def test_checksums_and_sizes_are_read(tmp_path: Path) -> None:
    directory = tmp_path / "sums"
    directory.mkdir()
    text = (DATA / "checksums.xml").read_text().replace("/CLUSTER_DIR", str(directory))
    path = directory / "checksums.xml"
    path.write_text(text)

    description = parse_cluster_xml(path, "sums")
    disk = description.frontend.disk
    assert disk.checksum == Checksum(algorithm="sha256", hexdigest=SHA_A)  # upper case in the file
    assert disk.parts == (
        Part(
            name="fe.img.aa",
            size=1048576,
            checksum=Checksum(
                algorithm="sha256", hexdigest="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
        ),
        Part(name="fe.img.ab", size=512, checksum=Checksum(algorithm="md5", hexdigest=MD5_A)),
        Part(name="fe.img.ac"),
    )
    compute = description.compute
    assert compute is not None
    # An absolute source inside the cluster directory becomes relative to it.
    assert compute.disk.source == "compute.img"
    assert compute.disk.checksum == Checksum(algorithm="md5", hexdigest=MD5_A)
    assert compute.disk.format == "raw"  # no <driver>: raw


def test_sha256_wins_over_md5_on_the_same_element(tmp_path: Path) -> None:
    text = variant("<part>fe.img.aa</part>", f'<part md5="{MD5_A}" sha256="{SHA_A}">fe.img.aa</part>')
    description = parse_cluster_xml(write_xml(tmp_path, text), "demo")
    assert description.frontend.disk.parts[0].checksum == Checksum(algorithm="sha256", hexdigest=SHA_A)


def test_checksum_on_file_element_is_the_image_checksum(tmp_path: Path) -> None:
    text = variant('<file type="splited">', f'<file type="splited" sha256="{SHA_A}">')
    description = parse_cluster_xml(write_xml(tmp_path, text), "demo")
    assert description.frontend.disk.checksum == Checksum(algorithm="sha256", hexdigest=SHA_A)


@pytest.mark.parametrize(
    ("memory", "mib"),
    [
        ("<memory>2097152</memory>", 2048),  # libvirt default unit: KiB
        ('<memory unit="KiB">1500</memory>', 2),  # rounded up
        ('<memory unit="k">1024</memory>', 1),
        ('<memory unit="MiB">512</memory>', 512),
        ('<memory unit="M">512</memory>', 512),
        ('<memory unit="G">2</memory>', 2048),
        ('<memory unit="GiB">2</memory>', 2048),
        ('<memory unit="gib">1</memory>', 1024),
        ('<memory unit="TiB">1</memory>', 1048576),
        ('<memory unit="b">268435456</memory>', 256),
        ('<memory unit="bytes">1048576</memory>', 1),
        ('<memory unit="KB">1000000</memory>', 954),  # 10^9 bytes
        ('<memory unit="GB">1</memory>', 954),
    ],
)
def test_memory_units_follow_libvirt(tmp_path: Path, memory: str, mib: int) -> None:
    description = parse_cluster_xml(write_xml(tmp_path, variant("<memory>1048576</memory>", memory)), "demo")
    assert description.frontend.memory_mib == mib


def test_legacy_file_placement_outside_the_disk_is_read(tmp_path: Path) -> None:
    text = variant(
        SPLIT_FILE,
        "",
    ).replace("</domain>", '</domain>\n    <file type="gzip"><part>fe.img.gz</part></file>')
    description = parse_cluster_xml(write_xml(tmp_path, text), "demo")
    assert description.frontend.disk.processor == "gzip"
    assert description.frontend.disk.parts == (Part(name="fe.img.gz"),)


def test_raw_file_type_without_parts_uses_the_image_in_place(tmp_path: Path) -> None:
    text = variant("<part>fe.img.aa</part>\n            <part>fe.img.ab</part>", "").replace(
        '<file type="splited">', '<file type="raw">'
    )
    description = parse_cluster_xml(write_xml(tmp_path, text), "demo")
    assert (description.frontend.disk.processor, description.frontend.disk.parts) == ("raw", ())


def test_processor_names_from_plugins_are_passed_through(tmp_path: Path) -> None:
    description = parse_cluster_xml(write_xml(tmp_path, variant('type="splited"', 'type="splited_xz"')), "demo")
    assert description.frontend.disk.processor == "splited_xz"


def test_file_names_are_normalized_relative_to_the_cluster_directory(tmp_path: Path) -> None:
    text = variant('<source file="fe.img"/>', '<source file="./img/../fe.img"/>').replace(
        "<part>fe.img.aa</part>", "<part>parts/./fe.img.aa</part>"
    )
    path = write_xml(tmp_path, text)
    description = parse_cluster_xml(path, "demo")
    assert description.frontend.disk.source == "fe.img"
    assert description.frontend.disk.parts[0].name == "parts/fe.img.aa"
    assert description.directory == path.parent


def test_relative_path_argument_gives_absolute_path_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_xml(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)
    description = parse_cluster_xml(Path("demo/cluster.xml"), "demo")
    assert description.path == path
    assert description.directory == path.parent


# --------------------------------------------------------------- replace_disk_source


def disk_children(xml: bytes, role: str) -> list[ET.Element]:
    root = ET.fromstring(xml)
    disk = root.find(f"{role}/domain/devices/disk")
    assert disk is not None
    return list(disk)


def test_replace_disk_source_leaves_exactly_one_source_driver_and_target(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    shutil.copytree(DATA, directory)
    out = replace_disk_source(
        directory / "demo.xml", "frontend", source_file="clonezilla-live-demo-frontend.raw", format="raw"
    )
    children = disk_children(out, "frontend")
    assert [c.tag for c in children] == ["driver", "source", "target"]
    assert children[0].attrib == {"name": "qemu", "type": "raw"}
    assert children[1].attrib == {"file": "clonezilla-live-demo-frontend.raw"}
    assert children[2].attrib == {"dev": "vda", "bus": "virtio"}
    assert out.startswith(b"<?xml version='1.0' encoding='utf-8'?>")

    local = directory / "demo-local.xml"
    local.write_bytes(out)
    description = parse_cluster_xml(local, "demo")
    assert description.frontend.disk.source == "clonezilla-live-demo-frontend.raw"
    assert (description.frontend.disk.processor, description.frontend.disk.parts) == ("raw", ())
    # The other section is untouched.
    assert description.compute is not None
    assert description.compute.disk.source == "demo-compute.img"
    assert ET.fromstring(description.frontend.domain_xml).findtext("name") == "demo-frontend"


def test_replace_disk_source_on_compute_with_qcow2_keeps_frontend(tmp_path: Path) -> None:
    frontend_section = BASE[BASE.index("<frontend>") : BASE.index("</frontend>") + len("</frontend>")]
    with_compute = variant("</vc>", frontend_section.replace("frontend", "compute") + "</vc>")
    out = replace_disk_source(
        with_compute,
        "compute",
        source_file="c.qcow2",
        format="qcow2",
    )
    root = ET.fromstring(out)
    assert root.find("compute/domain/devices/disk/driver").get("type") == "qcow2"
    assert root.find("compute/domain/devices/disk/source").get("file") == "c.qcow2"
    assert root.find("frontend//file") is not None  # frontend still has its parts
    assert root.find("compute//file") is None


def test_replace_disk_source_removes_legacy_file_outside_the_disk_and_zfs_source() -> None:
    text = variant('<source file="fe.img"/>', '<source volume="v" pool="p" host="h"/>').replace(
        "</domain>", '</domain><file type="gzip"><part>x.gz</part></file>'
    )
    text = text.replace(
        SPLIT_FILE,
        "",
    )
    out = replace_disk_source(text.encode(), "frontend", source_file="fe.raw", format="raw")
    root = ET.fromstring(out)
    assert root.find(".//file") is None and root.find(".//part") is None
    disk = root.find("frontend/domain/devices/disk")
    assert disk.attrib == {"type": "file", "device": "disk"}
    assert [s.attrib for s in disk.findall("source")] == [{"file": "fe.raw"}]


def test_replace_disk_source_refuses_escaping_image_names(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="must be a file name inside the cluster directory"):
        replace_disk_source(BASE, "frontend", source_file="../x.raw", format="raw")
    path = write_xml(tmp_path, BASE)
    with pytest.raises(FormatError, match="escapes the directory"):
        replace_disk_source(path, "frontend", source_file="/etc/x.raw", format="raw")


def test_replace_disk_source_needs_the_section(tmp_path: Path) -> None:
    path = write_xml(tmp_path, BASE)
    with pytest.raises(FormatError, match=r"cluster\.xml line 1: missing <compute> in <vc>"):
        replace_disk_source(path, "compute", source_file="c.raw", format="raw")


def test_replace_disk_source_refuses_unsafe_xml() -> None:
    with pytest.raises(FormatError, match="DTDs are not allowed"):
        replace_disk_source(DATA / "billion-laughs.xml", "frontend", source_file="x.raw", format="raw")
