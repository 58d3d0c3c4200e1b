"""A node's heap during an update, in a real MicroPython (issue 17: "peak heap during an update
within the firmware's 16 KB budget"; sim/ota_heap.py says how and why it is measured so).

The node is the compiled device build, booted through its boot shim, with its flash in a
real directory; it updates to the gateway's own firmware (17 .mpy files) as a real
``updates.offer`` serves it, in 512-byte blocks, through the real ``Updater.request`` and
``Updater.answer``. A ballast leaves the update only its budget over the node's resident
heap before each of the node's steps, and the collector runs only between steps (this WASI
build cannot collect inside them): an update that ends without MemoryError never needed
more, at any instant.
"""

import pytest

from gateway.provision.build import compile_firmware
from sim import ota_heap

KB = 1024


@pytest.fixture(scope="module")
def firmware():
    return [(f.path, f.data) for f in compile_firmware()]


@pytest.mark.parametrize("deflate", [True, False], ids=["deflated", "plain"])
def test_a_whole_update_fits_16_kb_of_heap_in_micropython(firmware, deflate):
    # Every step within 16 KB: a block appended, a file inflated through the 1 KB window,
    # its SHA-256 read back, renamed, the state record; the manifest's blocks; then, at the
    # request after its last block, the manifest decoded in place, verified, checked and
    # the slot cleared for it (26 KB when it was decoded into lists and strings at once);
    # last, the manifest written into the slot and the pointer flipped.
    r = ota_heap.measure(firmware, deflate, budget=16 * KB)
    assert "memory_error" not in r, r
    assert r["trial"] == "b 0" and r["installed"]  # switched, slot b byte-exact
    assert r["files_peak"] <= 16 * KB and r["manifest_peak"] <= 16 * KB
    assert r["manifest_peak"] == r["manifest_steps"][-1]  # the decoding step is the heaviest
    assert r["files_room"] <= 16 * KB + KB  # the ballast really cut the heap down
    assert r["manifest_room"] <= 16 * KB + KB
    assert r["live"] <= 3 * KB  # kept between steps: the received manifest, mostly
    plain = sum(len(data) for _, data in firmware)
    assert r["served"] == plain if not deflate else r["served"] < 0.85 * plain


def test_measured_alone_the_manifest_step_is_the_one_heavy_step_and_under_13_kb(firmware):
    # Measured with the whole heap: the manifest's heaviest step (decoding, verification,
    # clearing the slot, the first file's request) against the 16 KB it may have.
    r = ota_heap.measure(firmware, True, budget=None)
    assert r["trial"] == "b 0" and r["installed"]
    assert r["manifest_peak"] < 13 * KB, r["manifest_steps"]
    assert max(r["manifest_steps"][:-1]) < 3 * KB  # a block's answer, a request


def test_a_32_kb_deflate_window_would_not_fit_and_the_gateway_serves_1_kb(firmware):
    # The node inflates with the window the stream's header asks for: zlib's default 32 KB
    # cannot be had within 16 KB, at the first deflated file; the gateway's 1 KB (above) can.
    r = ota_heap.measure(firmware, True, budget=16 * KB, wbits=15)
    assert r["memory_error"]["kind"] == "f" and r["trial"] is None
    assert r["state"] == "downloading"  # nothing switched: slot a still boots
