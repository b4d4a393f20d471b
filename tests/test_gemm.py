"""pynn.ops.matmul and the sgemm kernel against a float64 numpy reference."""
import ctypes
import mmap
import sys

import numpy as np
import pytest

from pynn._kernels import core as kernels
from pynn.ops import matmul
from tests.helpers import EPS32

# Block sizes of every path (csrc/gemm_*.c): shapes below straddle them.
# MR 4/6/12, NR 8/16/32, MC 128/144/192, KC 256/256/512, NC 4096/4080/4096;
# up to 2 MC rows are one A block, with B packed in chunks (B_CHUNK_FLOATS).
KC = 256
# Beyond this many multiply-adds every ISA packs A and B when B would be read
# in place and A is not transposed (in_place_work in csrc/gemm_*.c: 2^21
# generic and AVX-512, 2^25 AVX2, 2^21 for a B with rows off 32-byte alignment
# or a ragged width); below, read in place. (AVX2 reads A in
# place up to 2^29 when it packs B whole; an A stored transposed is packed
# beyond 2^18: test_every_block_edge's two cases stay on the blocked path.)
PACKED = 1 << 25


@pytest.fixture(params=[1, 2])
def threads(request, set_threads):
    set_threads(request.param)
    return request.param


def operands(rng, m, n, k, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b


def reference(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    """alpha op(a) op(b) + beta c in float64, and the error bound of a float32 sum:
    a few k eps times the same expression over absolute values."""
    left = a.astype(np.float64).T if trans_a else a.astype(np.float64)
    right = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    exact = alpha * (left @ right)
    size = abs(alpha) * (np.abs(left) @ np.abs(right))
    if beta != 0.0:
        exact += beta * c.astype(np.float64)
        size += abs(beta) * np.abs(c.astype(np.float64))
    k = left.shape[1]
    return exact, 2.0 * (k + 2) * EPS32 * size


def assert_close(actual, exact, bound):
    assert actual.dtype == np.float32 and actual.shape == exact.shape
    error = np.abs(actual.astype(np.float64) - exact)
    assert np.all(np.isfinite(actual))
    assert np.all(error <= bound + 1e-30), f"worst error/bound {np.max(error / (bound + 1e-30)):.3g}"


def with_biases(exact, bound, col_bias, row_bias):
    """The reference and its bound after the epilogue adds the biases (two more roundings)."""
    exact = exact + col_bias[None, :] + row_bias[:, None]
    return exact, bound + 2 * EPS32 * (np.abs(exact) + np.abs(col_bias)[None, :] + np.abs(row_bias)[:, None])


SHAPES = [
    (0, 5, 3), (5, 0, 3), (5, 3, 0), (0, 0, 0), (1, 1, 1), (2, 3, 5), (7, 11, 13),
    (1, 4097, 5), (4097, 1, 3), (1, 37, 300), (53, 1, 301), (17, 1000, 3),
    (11, 31, 255), (13, 33, 257), (25, 65, 2 * KC + 1), (97, 89, 83),
    (145, 129, 31), (289, 97, 64), (150, 130, 257), (5, 300, 200), (300, 5, 200),
    (200, 301, 599), (1, 700, 300), (700, 1, 300), (300, 10, 100),
    # k <= 10: the rank-k update, row by row (on two threads from 2^16 elements)
    (256, 784, 1), (70, 13, 1), (9, 17, 4), (13, 70, 3), (300, 301, 2), (300, 230, 4),
]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_float64(isa, threads, m, n, k, trans_a, trans_b):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    c = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    assert_close(c, *reference(a, b, trans_a, trans_b))


@pytest.mark.parametrize("m,n,k", [(m, n, KC + 1) for m in (11, 12, 13) for n in (31, 32, 33)]
                         + [(m, 520, 520) for m in (127, 129, 143, 145, 191, 193,
                                                    255, 257, 287, 289, 383, 385)]
                         + [(260, 520, k) for k in (KC - 1, KC + 1, 2 * KC - 1, 2 * KC + 1)]
                         + [(40, n, 210) for n in (4079, 4080, 4081, 4095, 4096, 4097)])
def test_every_block_edge(isa, threads, m, n, k):
    assert m * n * k > PACKED or max(m, n) < 40
    rng = np.random.default_rng(m + n + k)
    for trans_a, trans_b in [(0, 0), (1, 1)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        c = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_close(c, *reference(a, b, trans_a, trans_b))


# Edge tiles of every row count up to one past the tallest tile (13), in place
# and packed (a transposed A is packed beyond 2^18 multiply-adds).
@pytest.mark.parametrize("m", range(1, 14))
@pytest.mark.parametrize("n,k", [(33, 70), (1000, 300)])
def test_every_edge_tile_height(isa, threads, m, n, k):
    rng = np.random.default_rng(m * n + k)
    for trans_a, trans_b in [(1, 0), (0, 0)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        c = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_close(c, *reference(a, b, trans_a, trans_b))


# C = A Bᵀ with 13 to 32 rows of A and k up to 4096 is computed as Cᵀ = B Aᵀ
# (TRANSPOSED_PRODUCT_* in csrc/gemm_kernels.h); fewer rows, or up to 20 rows
# beyond that k, as dot products (FEW_ROWS = 12, or FEW_ROWS_DEEP = 20 from
# DEEP_K = 512 on), in tiles of up to 4 x 3: shapes on both sides of each
# bound, and odd widths.
@pytest.mark.parametrize("m,n,k", [(m, n, k) for m in (7, 8, 12, 13, 20, 21, 32, 33) for n in (10, 37)
                                   for k in (511, 512)]
                         + [(m, n, k) for m in (7, 8, 20, 21) for n in (10, 37) for k in (4096, 4097)])
def test_few_rows_against_a_transposed_b(isa, threads, m, n, k):
    rng = np.random.default_rng(m * n + k)
    a, b = operands(rng, m, n, k, 0, 1)
    assert_close(matmul(a, b, trans_b=True), *reference(a, b, 0, 1))


# Cᵀ = B Aᵀ for every row count around the paths' bounds (13 to 32 rows; the
# tiles of B's rows are MR = 4, 6 or 12, Aᵀ's panels NR = 8, 16 or 32 wide),
# finished by the micro-kernel (a bias of C's columns, ReLU) or element by
# element (beta != 0, both biases); each sum the same on one or two threads,
# and, from 13 to 32 rows, for any split of B's rows, as an inference plan's
# threads split them (at other row counts a share of B's rows may take
# another path than the whole).
@pytest.mark.parametrize("m", range(1, 66))
def test_transposed_product_for_every_row_count(isa, m, set_threads):
    rng = np.random.default_rng(m)
    n, k = 37, 301
    a, b = operands(rng, m, n, k, 0, 1)
    col_bias = rng.standard_normal(n).astype(np.float32)
    row_bias = rng.standard_normal(m).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    exact, bound = reference(a, b, 0, 1)
    fused = kernels.gemm(a, b, None, False, True, 1.0, 0.0, col_bias, None, True)
    with_bias, with_bias_bound = with_biases(exact, bound, col_bias, np.zeros(m))
    assert_close(fused, np.maximum(with_bias, 0.0), with_bias_bound)
    both, both_bound = with_biases(*reference(a, b, 0, 1, 0.5, -1.5, c), col_bias, row_bias)
    assert kernels.gemm(a, b, c, False, True, 0.5, -1.5, col_bias, row_bias, False) is c
    assert_close(c, both, both_bound)
    results = []
    for count in (1, 2):
        set_threads(count)
        results.append(matmul(a, b, trans_b=True))
    np.testing.assert_array_equal(results[0], results[1])
    if 13 <= m <= 32:
        parts = [matmul(a, b[:16], trans_b=True), matmul(a, b[16:], trans_b=True)]
        np.testing.assert_array_equal(results[0], np.concatenate(parts, axis=1))
    assert_close(results[0], exact, bound)


@pytest.mark.parametrize("width,ld", [(256, 256), (200, 512), (250, 256)])
def test_b_rows_colliding_in_l1_are_packed_first(isa, threads, width, ld):
    # B rows a power of two of floats apart fall in few L1 sets: with many
    # rows of A the in-place path packs such a B (csrc/kernels.c, rows_collide),
    # partial micro-panels included; from COLLIDING_B_MIN_ROWS = 128 rows, so
    # two threads' 150 rows each pack it too
    rng = np.random.default_rng(width + ld)
    a = rng.standard_normal((300, 40)).astype(np.float32)
    b = rng.standard_normal((40, ld)).astype(np.float32)[:, :width]
    assert_close(matmul(a, b), *reference(a, b, 0, 0))


def aligned_matrix(rows, ld, rng, offset=0):
    """A [rows, ld] float32 matrix whose data starts `offset` floats past a
    64-byte boundary (numpy's own arrays start wherever malloc put them)."""
    buffer = np.empty(rows * ld + offset + 16, np.float32)
    start = (-(buffer.ctypes.data // 4)) % 16 + offset
    matrix = buffer[start:start + rows * ld].reshape(rows, ld)
    matrix[...] = rng.standard_normal((rows, ld))
    return matrix


@pytest.mark.parametrize("offset,n,ld", [(0, 256, 272), (4, 256, 272), (8, 256, 272),
                                         (0, 256, 268), (0, 256, 264), (0, 250, 272)])
def test_b_in_place_or_packed_by_alignment_and_width(isa, threads, offset, n, ld):
    # csrc/kernels.c sends an untransposed B whose rows are off 64-byte alignment
    # (offset, ld) or whose width is not a multiple of NR to the blocked path
    # from 2^21 multiply-adds (RAGGED_B_IN_PLACE_WORK); aligned, it is read in
    # place. 100 x n x 96 is between that bound and PACKED.
    rng = np.random.default_rng(offset + n + ld)
    a = rng.standard_normal((100, 96)).astype(np.float32)
    b = aligned_matrix(96, ld, rng, offset)[:, :n]
    assert kernels.is_float32_matrix(b) and (1 << 21) < 100 * n * 96 < PACKED
    assert_close(matmul(a, b), *reference(a, b, 0, 0))


@pytest.mark.parametrize("m,n,k", [(1, 9, 4), (9, 1, 4), (7, 9, 5), (40, 50, 60), (220, 400, 400),
                                   (40, 50, 2), (300, 230, 2)])
@pytest.mark.parametrize("alpha,beta", [(0.5, -1.5), (0.0, 2.0), (1.0, 0.0)])
def test_alpha_beta(isa, threads, m, n, k, alpha, beta):
    rng = np.random.default_rng(3)
    for trans_a, trans_b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        c = rng.standard_normal((m, n)).astype(np.float32)
        exact, bound = reference(a, b, trans_a, trans_b, alpha, beta, c)
        out = matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, out=c)
        assert out is c
        assert_close(c, exact, bound)


@pytest.mark.parametrize("m,n,k", [(1, 9, 4), (9, 1, 4), (7, 9, 0), (7, 9, 5), (130, 140, 150),
                                   (220, 400, 400), (130, 140, 1), (300, 230, 2)])
def test_beta_zero_ignores_nan_in_out(isa, threads, m, n, k):
    rng = np.random.default_rng(4)
    a, b = operands(rng, m, n, k, 0, 1)
    out = np.full((m, n), np.nan, dtype=np.float32)
    matmul(a, b, trans_b=True, out=out)
    assert_close(out, *reference(a, b, 0, 1))


def test_out_is_reused_and_returned(isa):
    rng = np.random.default_rng(5)
    out = np.empty((20, 30), np.float32)
    for _ in range(2):
        a, b = operands(rng, 20, 30, 40, 0, 0)
        assert matmul(a, b, out=out) is out
        assert_close(out, *reference(a, b, 0, 0))


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("m,n,k", [(1, 20, 30), (20, 1, 30), (7, 9, 13), (60, 70, 300), (60, 70, 3)])
def test_row_slices_are_read_in_place(isa, m, n, k, trans_a, trans_b):
    rng = np.random.default_rng(6)
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    big_a = np.full((a.shape[0], a.shape[1] + 7), np.nan, np.float32)
    big_b = np.full((b.shape[0], b.shape[1] + 3), np.nan, np.float32)
    big_a[:, :a.shape[1]] = a
    big_b[:, :b.shape[1]] = b
    view_a, view_b = big_a[:, :a.shape[1]], big_b[:, :b.shape[1]]
    assert kernels.is_float32_matrix(view_a) and kernels.is_float32_matrix(view_b)
    c = matmul(view_a, view_b, trans_a=trans_a, trans_b=trans_b)
    assert_close(c, *reference(a, b, trans_a, trans_b))  # the NaN padding was never read


def guarded(shape, rng):
    """A float32 array whose last element sits just before an unreadable page."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    nbytes = int(np.prod(shape)) * 4
    pages = -(-nbytes // page) + 1
    region = mmap.mmap(-1, pages * page)
    raw = np.frombuffer(region, dtype=np.uint8)
    guard = raw.ctypes.data + (pages - 1) * page
    assert libc.mprotect(ctypes.c_void_p(guard), page, 0) == 0  # PROT_NONE
    start = (pages - 1) * page - nbytes
    array = raw[start:start + nbytes].view(np.float32).reshape(shape)
    array[...] = rng.standard_normal(shape)
    return array, region, raw


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses mprotect")
@pytest.mark.parametrize("m,n,k", [(1, 4097, 3), (4097, 1, 3), (13, 35, 17), (3, 4097, 5), (37, 41, 300),
                                   (37, 41, 2), (5, 4097, 1), (29, 37, 301)])
def test_never_reads_past_the_operands(isa, m, n, k):
    rng = np.random.default_rng(7)
    keep = []
    for trans_a, trans_b in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        a, *held_a = guarded((k, m) if trans_a else (m, k), rng)
        b, *held_b = guarded((n, k) if trans_b else (k, n), rng)
        keep += [held_a, held_b]
        c = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        assert_close(c, *reference(a, b, trans_a, trans_b))


# 60 x 700 x 300 and 200 x 700 x 300 take the blocked path with all of m in
# one A block (up to 2 MC rows), which packs B a chunk of columns at a time
# (csrc/kernels.c, B_CHUNK_FLOATS): several chunks on every ISA and thread count,
# each with its share of the biases.
@pytest.mark.parametrize("m,n,k", [(1, 40, 30), (40, 1, 30), (7, 9, 13), (5, 6, 0), (70, 90, 300),
                                   (32, 10, 50), (220, 400, 400), (13, 70, 3), (300, 230, 2),
                                   (60, 700, 300), (200, 700, 300)])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_bias_and_relu(isa, threads, m, n, k, relu):
    rng = np.random.default_rng(8)
    for trans_a, trans_b in [(0, 0), (0, 1), (1, 0)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        col_bias = rng.standard_normal(n).astype(np.float32)
        row_bias = rng.standard_normal(m).astype(np.float32)
        c = np.full((m, n), np.nan, np.float32)
        out = kernels.gemm(a, b, c, trans_a, trans_b, 1.0, 0.0, col_bias, row_bias, relu)
        assert out is c
        exact, bound = with_biases(*reference(a, b, trans_a, trans_b), col_bias, row_bias)
        if relu:
            exact = np.maximum(exact, 0.0)
            assert np.all(c >= 0)
        assert_close(c, exact, bound)


# The blocked path starts its column tiles where C's rows reach a cache line
# (csrc/kernels.c, line_lead): a first micro-panel 1 to 15 columns wide, also
# in the first chunk of columns (NC, or B_CHUNK_FLOATS with one A block).
# Rows of a multiple of 16 floats all start at C's own offset in its line.
@pytest.mark.parametrize("offset", [0, 1, 4, 12, 15])
@pytest.mark.parametrize("m,n,k", [(300, 4112, 28), (100, 704, 480)])
def test_c_rows_starting_inside_a_cache_line(isa, threads, offset, m, n, k):
    assert m * n * k > PACKED
    rng = np.random.default_rng(offset + m)
    a, b = operands(rng, m, n, k, 0, 1)
    col_bias = rng.standard_normal(n).astype(np.float32)
    row_bias = rng.standard_normal(m).astype(np.float32)
    buffer = np.full(m * n + 48, np.nan, np.float32)
    start = (-(buffer.ctypes.data // 4)) % 16 + 16 + offset
    c = buffer[start:start + m * n].reshape(m, n)
    c[...] = rng.standard_normal((m, n))
    exact, bound = with_biases(*reference(a, b, 0, 1, 1.0, 0.5, c.copy()), col_bias, row_bias)
    assert kernels.gemm(a, b, c, 0, 1, 1.0, 0.5, col_bias, row_bias, True) is c
    assert_close(c, np.maximum(exact, 0.0), bound)
    # nothing around C was written
    assert np.all(np.isnan(buffer[:start])) and np.all(np.isnan(buffer[start + m * n:]))


@pytest.mark.parametrize("k", range(1, 12))
def test_rank_update_for_every_k(isa, threads, k):
    # An untransposed B with k <= 10 rows goes row by row, one unrolled kernel
    # per k (csrc/gemm_avx2.c); k = 11 is the tiles' again. 250 columns end in
    # a masked vector; from k = 2, 300 x 250 is split across two threads.
    rng = np.random.default_rng(k)
    for trans_a in (0, 1):
        a, b = operands(rng, 300, 250, k, trans_a, 0)
        c = rng.standard_normal((300, 250)).astype(np.float32)
        col_bias = rng.standard_normal(250).astype(np.float32)
        row_bias = rng.standard_normal(300).astype(np.float32)
        exact, bound = with_biases(*reference(a, b, trans_a, 0, 0.5, -1.5, c), col_bias, row_bias)
        assert kernels.gemm(a, b, c, trans_a, False, 0.5, -1.5, col_bias, row_bias, True) is c
        assert_close(c, np.maximum(exact, 0.0), bound)


def test_relu_epilogue_keeps_nan(isa):
    a = np.array([[np.nan, 1.0]], np.float32)
    b = np.ones((2, 3), np.float32)
    c = kernels.gemm(a, b, None, False, False, 1.0, 0.0, None, None, True)
    assert np.all(np.isnan(c))


@pytest.mark.parametrize("m,n,k,trans_a,trans_b", [
    (301, 257, 600, 0, 1), (150, 130, 257, 1, 0), (1, 700, 300, 0, 1), (1, 700, 300, 0, 0),
    (700, 1, 300, 1, 0), (700, 1, 300, 0, 0), (300, 10, 100, 0, 1), (256, 784, 1, 1, 0),
    (300, 230, 4, 0, 0),
    # slabs cut inside a register tile: 64 of 128 rows, 392 of 784 columns, and
    # the blocked path's 152 of 300 rows
    (128, 128, 256, 0, 1), (128, 128, 256, 0, 0), (32, 784, 256, 0, 0), (300, 520, 520, 0, 0), (16, 1152, 384, 0, 1), (32, 385, 1537, 0, 1)])
def test_same_result_on_one_and_two_threads(isa, m, n, k, trans_a, trans_b, set_threads):
    rng = np.random.default_rng(9)
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    results = []
    for count in (1, 2):
        set_threads(count)
        results.append(matmul(a, b, trans_a=trans_a, trans_b=trans_b))
    np.testing.assert_array_equal(results[0], results[1])


def test_concurrent_calls_match_serial_ones():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(10)
    shapes = [(1, 300, 200), (40, 50, 60), (150, 130, 257), (301, 257, 600), (300, 10, 100)] * 3
    problems = [operands(rng, m, n, k, 0, 1) for m, n, k in shapes]
    serial = [matmul(a, b, trans_b=True) for a, b in problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda ab: matmul(*ab, trans_b=True), problems))
    for one, other in zip(serial, concurrent):
        np.testing.assert_array_equal(one, other)


def test_converts_other_float_inputs():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    b = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(4, 5))
    c = matmul(a, b)
    np.testing.assert_allclose(c, a @ b.astype(np.float64), rtol=1e-6)
    np.testing.assert_allclose(matmul(a.tolist(), b[::-1][::-1], alpha=2), 2 * (a @ b), rtol=1e-6)


def test_bad_inputs():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: op\(a\) is 3x4, op\(b\) is 3x4"):
        matmul(a, b[:3, :4].copy())
    with pytest.raises(ValueError, match="matmul: inner"):
        matmul(a, b, trans_a=True)
    with pytest.raises(ValueError, match="matmul: a must be 2-D, got shape"):
        matmul(np.ones(4, np.float32), b)
    with pytest.raises(ValueError, match="matmul: b must be 2-D"):
        matmul(a, np.ones((1, 4, 5), np.float32))
    with pytest.raises(TypeError, match="matmul: a must be a floating-point array"):
        matmul(np.ones((3, 4), np.int32), b)
    with pytest.raises(ValueError, match=r"matmul: out must have shape \(3, 5\), got \(5, 3\)"):
        matmul(a, b, out=np.empty((5, 3), np.float32))
    with pytest.raises(TypeError, match="matmul: out must have dtype float32, got float64"):
        matmul(a, b, out=np.empty((3, 5)))
    with pytest.raises(ValueError, match="matmul: out must be C-contiguous"):
        matmul(a, b, out=np.empty((5, 3), np.float32).T)
    with pytest.raises(ValueError, match="matmul: out must not overlap an input"):
        square = np.ones((4, 4), np.float32)
        matmul(square, square, out=square)
    with pytest.raises(ValueError, match="matmul: beta=1.0 reads out"):
        matmul(a, b, beta=1.0)
    with pytest.raises(TypeError, match="matmul: alpha must be a real number"):
        matmul(a, b, alpha="2")


def test_out_overlapping_part_of_an_input_is_refused():
    whole = np.ones((8, 4), np.float32)
    weight = np.ones((4, 4), np.float32)
    assert matmul(whole[:4], weight, out=whole[4:]) is not None  # disjoint halves are fine
    with pytest.raises(ValueError, match="matmul: out must not overlap an input"):
        matmul(whole[2:6], weight, out=whole[4:])
