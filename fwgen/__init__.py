"""fwgen: embedded Linux firmware for ARM and MIPS boards, proven to boot under QEMU."""

__version__ = "0.1.0"
