"""pragma's ``kvm_rocks`` driver: virtual clusters as libvirt/KVM domains.

The entry point (``pragma.drivers`` → ``kvm_rocks``) is
:class:`pragma_kvm_rocks.driver.KvmRocksDriver`; libvirt-python is imported
only when the driver talks to a host.
"""

__version__ = "0.1.0"
