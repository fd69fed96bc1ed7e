"""Footprint: flash, weights and RAM of a linked image, and the message when a model does not fit its board."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from edgebin import targets
from edgebin.errors import UsageError
from edgebin.runners import DoesNotFitError, Footprint, QemuRunner, check_fits, measure_footprint
from edgebin.runners.footprint import weights_from_map

WEIGHT_FLOATS = 1000  # the toy's one constant array: 4,000 bytes

MODEL_C = f"""#include "model.h"
#define N_WEIGHTS {WEIGHT_FLOATS}
static float arena[16];
static const float weights[N_WEIGHTS] = {{1.0f, 2.0f}};
int edgebin_model_run(const float* input, float* output) {{
  for (int i = 0; i < 16; i++) arena[i] = input[i];
  float acc = 0.0f;
  for (int i = 0; i < N_WEIGHTS; i++) acc += weights[i] * arena[i % 16];
  output[0] = acc;
  return 0;
}}
"""
MODEL_H = """#define EDGEBIN_INPUT_ELEMS 16
#define EDGEBIN_OUTPUT_ELEMS 1
int edgebin_model_run(const float* input, float* output);
"""


@pytest.fixture(scope="module")
def toy_build(tmp_path_factory) -> tuple[QemuRunner, Path]:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed; run make setup")
    root = tmp_path_factory.mktemp("footprint")
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "model.h").write_text(MODEL_H)
    (bundle / "model.c").write_text(MODEL_C)
    (bundle / "bundle.json").write_text(json.dumps({
        "input": {"shape": [1, 16]}, "output": {"shape": [1, 1]}, "arena_bytes": 64, "sources": ["model.c"]}))
    runner = QemuRunner(targets.load("cortex-m4"))
    return runner, runner.build(bundle, root / "build")


def test_footprint_of_a_built_elf_agrees_with_binutils(toy_build):
    runner, elf = toy_build
    fp = runner.footprint(elf, stack_bytes=200)
    assert fp.weights_bytes == 4 * WEIGHT_FLOATS
    assert fp.flash_bytes > fp.weights_bytes and fp.code_bytes == fp.flash_bytes - fp.weights_bytes
    # Independent reference: arm-none-eabi-size; flash holds .init, .text (with .rodata) and .data's initial values.
    sizes = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(elf.parent / "footprint.elf")], capture_output=True,
                           text=True, timeout=30, check=True).stdout
    section = {line.split()[0]: int(line.split()[1]) for line in sizes.splitlines()[2:] if len(line.split()) == 3}
    assert fp.flash_bytes == section[".init"] + section[".text"] + section[".data"]
    assert fp.static_ram_bytes == section[".data"] + section[".bss"]
    # .bss holds the arena (64 B) and the bare main's input and output buffers (17 floats).
    assert fp.static_ram_bytes >= 64 + 17 * 4
    assert (fp.arena_bytes, fp.stack_bytes, fp.ram_bytes) == (64, 200, fp.static_ram_bytes + 200)


def test_qemu_firmware_is_bigger_than_the_board_image(toy_build):
    _, elf = toy_build
    harness = measure_footprint(elf)  # firmware.elf: semihosting I/O and fault reporting on top of the model
    board = measure_footprint(elf.parent / "footprint.elf")
    assert harness.weights_bytes == board.weights_bytes == 4 * WEIGHT_FLOATS
    assert harness.flash_bytes > board.flash_bytes


def test_weights_are_rodata_of_the_links_own_objects():
    text = """Discarded input sections
 .rodata.unused 0x00000000      0x400 build/obj/bundle/model.c.o

Linker script and memory map

.text           0x00000040     0x2000
 .text.main     0x00000040       0x20 build/obj/harness/footprint_main.o
 .rodata.c0     0x00000100      0x100 build/obj/bundle/model.c.o
 .rodata.a_long_constant_name
                0x00000200       0x40 build/obj/bundle/model.c.o
 .rodata        0x00000240        0x8 build/obj/bundle/kernels.c.o
 .rodata.str1.4
                0x00000248       0x10 build/obj/bundle/model.c.o
 .rodata.__exp_data
                0x00000258      0x800 /usr/lib/picolibc/arm-none-eabi/lib/libm.a(exp_data.c.o)
 .rodata.paint  0x00000a58       0x20 build/obj/harness/main.o
"""
    assert weights_from_map(text) == 0x100 + 0x40 + 0x8  # not discarded, strings, libm tables or the harness


def test_the_emitters_weights_section_is_all_that_counts_when_present():
    text = """Linker script and memory map
 .rodata.edgebin_shape0
                0x000014b0       0x20 build/obj/bundle/model.c.o
 .rodata.edgebin_weights
                0x000014d0      0x698 build/obj/bundle/model.c.o
 .rodata.edgebin_t1
                0x00001b68       0x28 build/obj/bundle/model.c.o
"""
    assert weights_from_map(text) == 0x698  # tensor shapes and descriptors are code-side constants, not weights


def test_check_fits_names_what_overflows_and_by_how_much():
    m4 = targets.load("cortex-m4")
    fp = Footprint(flash_bytes=612_345, weights_bytes=540_000, static_ram_bytes=20_000, arena_bytes=12_000)
    with pytest.raises(DoesNotFitError) as err:
        check_fits(fp, m4)
    assert str(err.value) == ("model needs 612,345 B of flash (weights 540,000 B, code 72,345 B) but cortex-m4 "
                              "(STM32F446RE) has 524,288 B: 88,057 B too much; try a smaller model or --method binary")
    assert err.value.exit_code == 2 and isinstance(err.value, UsageError)
    check_fits(replace(fp, flash_bytes=100_000, weights_bytes=90_000), m4)  # fits: no error


def test_tiny_board_reports_flash_and_ram_together(toy_build):
    runner, elf = toy_build
    fp = runner.footprint(elf, stack_bytes=300)
    tiny = replace(targets.load("cortex-m4"), name="tiny-m0", board="TinyBoard", flash_bytes=1024, ram_bytes=256)
    with pytest.raises(DoesNotFitError) as err:
        check_fits(fp, tiny)
    message = str(err.value)
    assert f"model needs {fp.flash_bytes:,} B of flash (weights 4,000 B" in message
    assert f"tiny-m0 (TinyBoard) has 1,024 B: {fp.flash_bytes - 1024:,} B too much" in message
    assert f"model needs {fp.ram_bytes:,} B of RAM (arena 64 B, stack 300 B" in message
    assert f"has 256 B: {fp.ram_bytes - 256:,} B too much" in message


def test_unreadable_inputs_are_usage_errors(tmp_path):
    not_elf = tmp_path / "x.elf"
    not_elf.write_bytes(b"not an elf")
    with pytest.raises(UsageError, match="not a little-endian ELF"):
        measure_footprint(not_elf)
    with pytest.raises(UsageError, match="cannot read"):
        measure_footprint(tmp_path / "missing.elf")


def test_elf_without_its_map_is_rejected(toy_build, tmp_path):
    _, elf = toy_build
    lone = tmp_path / "lone.elf"
    lone.write_bytes(elf.read_bytes())
    with pytest.raises(UsageError, match="lone.map is missing"):
        measure_footprint(lone)
