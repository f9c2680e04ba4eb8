"""Freed blocks are reused rather than handed back to the kernel (page faults per model call)."""

import subprocess
import sys

import pytest

CYCLES = """
import resource, sys
if sys.argv[1] == "keep":
    from napari_ftu.models.allocator import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():  # 64 MB allocated, written page by page and freed, as a model call's activations
    b = bytearray(64 << 20)
    b[::4096] = bytes(len(b) // 4096)
block()
start = faults()
for _ in range(5):
    block()
print(faults() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_freed_64_mb_block_is_reused_instead_of_faulting_in_fresh_pages():
    def faults(mode):
        run = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin"})
        return int(run.stdout.strip())

    plain, kept = faults("plain"), faults("keep")
    assert plain >= 5 * 32  # glibc maps each block above 32 MB afresh: a fault per page (4 kB, or 2 MB huge)
    assert kept <= plain / 10, (plain, kept)
