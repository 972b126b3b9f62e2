"""A repository's domain template cannot reach the host: no host file, device, socket, QEMU argument or confinement off.

libvirt runs what a domain's XML says, with root's help (it relabels the
files it names for QEMU), and the template comes from a repository. Every
payload below would hand the guest, or QEMU, something of the host; each is
refused with one line before anything is made. The templates a PRAGMA image
really carries (the legacy examples) still build.
"""

from __future__ import annotations

from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest

from pragma_core.errors import FormatError
from pragma_kvm_rocks.domainxml import Nic, build_domain_xml, check_template
from pragma_kvm_rocks.records import NodeRecord

QEMU_NS = 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"'


def domain(inside: str, devices: str = "", *, attributes: str = "") -> str:
    return (f'<domain type="kvm" {attributes}><name>t</name><memory>1024</memory><vcpu>1</vcpu>'
            f'<os><type arch="x86_64">hvm</type></os>{inside}<devices>{devices}</devices></domain>')


HOSTILE = {
    "qemu command line": domain('<qemu:commandline><qemu:arg value="-drive"/><qemu:arg value="file=/etc/shadow"/>'
                                '</qemu:commandline>', attributes=QEMU_NS),
    "confinement off": domain('<seclabel type="none"/>'),
    "fw_cfg file": domain('<sysinfo type="fwcfg"><entry name="opt/x" file="/etc/shadow"/></sysinfo>'),
    "memory backed by a host file": domain('<memoryBacking><source type="file"/></memoryBacking>'),
    "host bootloader": domain("<bootloader>/usr/bin/pygrub</bootloader>"),
    "firmware loader": domain("").replace("</os>", "<loader>/etc/shadow</loader></os>"),
    "nvram file": domain("").replace("</os>", "<nvram>/root/nv</nvram></os>"),
    "acpi table": domain("").replace("</os>", '<acpi><table type="slic">/etc/shadow</table></acpi></os>'),
    "host filesystem": domain("", '<filesystem type="mount"><source dir="/"/><target dir="root"/></filesystem>'),
    "pci passthrough": domain("", '<hostdev mode="subsystem" type="pci"><source><address bus="0x01"/></source></hostdev>'),
    "usb redirection": domain("", '<redirdev bus="usb" type="tcp"><source mode="connect" host="10.0.0.1" service="4000"/></redirdev>'),
    "host tpm": domain("", '<tpm model="tpm-tis"><backend type="passthrough"><device path="/dev/tpm0"/></backend></tpm>'),
    "shared memory": domain("", '<shmem name="x"><model type="ivshmem-plain"/></shmem>'),
    "cdrom of a host file": domain("", '<disk type="file" device="cdrom"><source file="/etc/shadow"/><target dev="hdc"/></disk>'),
    "block device cdrom": domain("", '<disk type="block" device="cdrom"><source dev="/dev/sda"/><target dev="hdc"/></disk>'),
    "serial to a host file": domain("", '<serial type="file"><source path="/etc/shadow"/></serial>'),
    "serial to a tcp port": domain("", '<serial type="tcp"><source mode="connect" host="10.0.0.1" service="22"/></serial>'),
    "console on a host device": domain("", '<console type="dev"><source path="/dev/tty1"/></console>'),
    "serial logged to a host file": domain("", '<serial type="pty"><log file="/etc/shadow"/></serial>'),
    "channel on a chosen socket": domain("", '<channel type="unix"><source mode="bind" path="/run/x.sock"/></channel>'),
    "input from a host device": domain("", '<input type="passthrough" bus="virtio"><source evdev="/dev/input/event0"/></input>'),
    "graphics on a host socket": domain("", '<graphics type="vnc"><listen type="socket" socket="/run/vnc.sock"/></graphics>'),
    "rng from a host file": domain("", '<rng model="virtio"><backend model="random">/etc/shadow</backend></rng>'),
    "rng from a socket": domain("", '<rng model="virtio"><backend model="egd" type="tcp"><source mode="connect" host="h" service="1"/>'
                                    "</backend></rng>"),
    # a second <devices> or <os>: libvirt reads every copy, the checks would see only the first
    "a second devices element": domain("", "").replace(
        "</domain>", '<devices><disk type="file" device="disk"><source file="/etc/shadow"/><target dev="vdb"/></disk>'
                     '<filesystem type="mount" accessmode="passthrough"><source dir="/"/><target dir="r"/></filesystem>'
                     "</devices></domain>"),
    "a second os element": domain("").replace("<devices>", "<os><loader>/etc/shadow</loader><initrd>/etc/shadow</initrd>"
                                                             "</os><devices>"),
    "cdrom of another cluster's volume": domain("", '<disk type="volume" device="cdrom"><source pool="default" '
                                                     'volume="other-compute-0.qcow2"/><target dev="hdc"/></disk>'),
    "floppy of another cluster's volume": domain("", '<disk type="volume" device="floppy"><source pool="default" '
                                                      'volume="other-compute-0.qcow2"/><target dev="fda"/></disk>'),
    "cdrom fetched from the host's network": domain("", '<disk type="network" device="cdrom"><source protocol="http" '
                                                         'name="/latest"><host name="169.254.169.254" port="80"/>'
                                                         '</source><target dev="hdc"/></disk>'),
    "lun passthrough": domain("", '<disk type="block" device="lun"><target dev="sda"/></disk>'),
    "real-time scheduling": domain('<cputune><vcpusched vcpus="0" scheduler="fifo" priority="99"/></cputune>'),
    "host io threads": domain("<iothreads>100000</iothreads>"),
    "host numa pinning": domain('<numatune><memory mode="strict" nodeset="0"/></numatune>'),
    "memory dump on crash": domain("<on_crash>coredump-restart</on_crash>"),
    "watchdog dumps memory": domain("", '<watchdog model="i6300esb" action="dump"/>'),
    "sdl display with the host's X authority": domain("", '<graphics type="sdl" display=":0" xauth="/root/.Xauthority"/>'),
    "the host's smbios identity": domain("").replace("</os>", '<smbios mode="host"/></os>'),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_template_that_reaches_the_host_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(FormatError) as info:
        check_template(HOSTILE[name])
    message = str(info.value)
    assert message.startswith("domain template: ") and "is not allowed" in message and "\n" not in message


LEGACY = domain("", '<disk type="file" device="disk"><driver name="qemu" type="raw"/><source file="demo-frontend.img"/>'
                    '<target dev="vda" bus="virtio"/><file type="raw" filename="demo-frontend.img"/></disk>'
                    '<interface type="bridge"><source bridge="eth0.2"/><model type="virtio"/></interface>')
ORDINARY = domain('<features><acpi/><apic/></features><clock offset="utc"/><on_reboot>restart</on_reboot>',
                  '<serial type="pty"><source path="/dev/pts/3"/><target port="0"/></serial>'
                  '<console type="pty" tty="/dev/pts/3"><source path="/dev/pts/3"/><target type="serial" port="0"/></console>'
                  '<input type="tablet" bus="usb"/><graphics type="vnc" port="-1" autoport="yes" listen="127.0.0.1"/>'
                  '<video><model type="cirrus"/></video><memballoon model="virtio"/>'
                  '<rng model="virtio"><backend model="random">/dev/urandom</backend></rng>'
                  '<channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"/></channel>'
                  '<disk type="file" device="cdrom"><target dev="hdc" bus="ide"/><readonly/></disk>'
                  '<interface type="bridge"><model type="e1000"/><rom enabled="no" file="/etc/shadow"/></interface>')


@pytest.mark.parametrize("template", [LEGACY, ORDINARY], ids=["legacy-example", "ordinary-devices"])
def test_the_templates_images_really_carry_still_build(template: str, tmp_path: Path) -> None:
    record = NodeRecord(cluster="vc1", name="vc1", hostname="vc1", role="frontend", host="localhost", cpus=1, memory_mib=256)
    xml = build_domain_xml(template, name="vc1", domain_type="kvm", vcpus=1, memory_mib=256, disk=tmp_path / "d.qcow2",
                           disk_format="qcow2", nics=[Nic(mac="52:54:00:00:00:01", bridge="br0")], record=record,
                           cluster_dir=tmp_path, console_log=tmp_path / "vc1.console.log")
    root = SafeET.fromstring(xml)
    (nic,) = root.iter("interface")
    roms = [r.attrib for r in nic.iter("rom")]
    assert roms == ([{"enabled": "no"}] if template is ORDINARY else []), "a template's ROM switch is kept, never its file"
    assert [log.get("file") for log in root.iter("log")] == [str(tmp_path / "vc1.console.log")]
    assert not [s for s in root.iter("source") if s.get("path")], "a dumped pty's path is libvirt's to choose"


def test_a_display_listens_where_the_host_says_not_where_the_template_says(tmp_path: Path) -> None:
    template = domain("", '<graphics type="vnc" autoport="yes" listen="0.0.0.0"><listen type="address" address="0.0.0.0"/>'
                          "</graphics>")
    record = NodeRecord(cluster="vc1", name="vc1", hostname="vc1", role="frontend", host="localhost", cpus=1, memory_mib=256)
    xml = build_domain_xml(template, name="vc1", domain_type="kvm", vcpus=1, memory_mib=256, disk=tmp_path / "d.qcow2",
                           disk_format="qcow2", nics=[], record=record, cluster_dir=tmp_path,
                           console_log=tmp_path / "vc1.console.log")
    (graphics,) = SafeET.fromstring(xml).iter("graphics")
    assert graphics.get("listen") is None and graphics.find("listen") is None, "qemu.conf's address (127.0.0.1) applies"

