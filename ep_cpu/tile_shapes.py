"""Tile shapes of the compiled float drivers (`ep_cpu.microkernel`): rows per row panel and
tiles per block of a convolution, chosen in Python when a conv or GEMM is planned (none of it
is compiled in: the drivers take the choices as arguments)."""
from __future__ import annotations

from ep_cpu.microkernel import NR, wide

# Convolution: the input bytes a block of tiles reads (its planes over the block's positions),
# kept in L2 while every row panel of weights passes over the block (`block_tiles`). Blocks of a
# fixed 2048 positions read 2 MB for 256 channels and ran from L3: Intel Xeon, 1 thread, the
# driver alone, 256->64 1x1 on 56x56 34.5 -> 52 GMAC/s with 8-16 tiles a block, 512->128 on 28x28
# 50.6 -> 56.4; 64 and 128 channels measured flat from 2 to 64 tiles.
BLOCK_INPUT_BYTES = 512 * 1024
BLOCK_TILES_MAX = 64


def block_tiles(planes: int) -> int:
    """Tiles per block of a conv whose tiles read `planes` input planes (channels, times the
    stride phases): as many as keep the block's input within BLOCK_INPUT_BYTES."""
    return max(1, min(BLOCK_TILES_MAX, BLOCK_INPUT_BYTES // (max(1, planes) * NR * 4)))


def choose_mr(rows: int) -> int:
    """Tile rows for a matrix of `rows` rows where every row panel has them (the int8 kernels):
    12 (more accumulators) unless 8 wastes fewer padded rows (16, 32, 40 ... channels; AVX-512
    only); 4 for up to 4 rows (a recurrent step's batch: 8 accumulators still cover the FMA
    latency)."""
    if rows <= 4:
        return 4
    if not wide():   # AVX2 runs 8 rows as passes of 4 (8 accumulators: ~15% slower a row)
        return 8 if -(-rows // 8) * 8 * 1.15 < -(-rows // 12) * 12 else 12
    waste12 = -(-rows // 12) * 12 - rows
    waste8 = -(-rows // 8) * 8 - rows
    return 8 if waste8 < waste12 else 12


def panel_rows(rows: int) -> int:
    """Tile rows of the float drivers' full row panels, whose last panel has tiles of its own
    height (`microkernel.tail_rows`). AVX-512: 12 from 9 rows on; the 12-row tile ran 12-16%
    faster than the 8-row one (BERT-base's 128 x 768 x 3072 from L2: 63 -> 75 GMAC/s), and
    128 = 10 x 12 + 8 rows run as such. AVX2: as `choose_mr` (not measured with tails)."""
    if not wide():
        return choose_mr(rows)
    return 4 if rows <= 4 else (8 if rows <= 8 else 12)


def choose_gemm_mr(rows: int) -> int:
    """Tile rows of the GEMM tiles (`microkernel.gemm_tile`) for A of `rows` rows: one or two
    rows get tiles of their own (a streaming model's one-position conv, a batch-1 recurrent
    step), where a 4-row tile spent 4x or 2x the multiply-adds; otherwise `panel_rows`."""
    return rows if 1 <= rows <= 2 else panel_rows(rows)
