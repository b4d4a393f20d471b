"""Fit the interval table of the AVX-512 tanh (csrc/vmath.h) and print it as C.

Each interval gets a degree-5 polynomial in t = |x| - left end, fitted for
relative error by iteratively reweighted least squares on Chebyshev nodes.
Coefficients are rounded to float32 one at a time, lowest power first, and the
higher ones refitted around each rounded value, so rounding costs little.
Run: python tools/fit_tanh.py > table.txt; then check every float with the
kernel itself (tests/test_vmath.py samples the range).
"""
import numpy as np

DEGREE = 5
NODES = 400


def interval_left_ends():
    ends = [0.0]                      # [0, 1/16): odd series, t = |x|
    for exponent in range(-4, 3):     # four per binade from 1/16 to 8
        ends += [2.0 ** exponent * (1 + quarter / 4) for quarter in range(4)]
    return ends + [8.0]               # [8, 9]; from 9 on tanh rounds to 1


def fit(lo, hi, fixed):
    k = np.arange(NODES)
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / NODES)
    x = np.concatenate([x, [max(lo, 1e-6), hi]])
    t, f = x - lo, np.tanh(x)
    coefficients = []
    for power in range(DEGREE + 1):
        if power < len(fixed):
            coefficients.append(np.float32(fixed[power]))
            continue
        rest = f - sum(float(c) * t ** i for i, c in enumerate(coefficients))
        basis = np.stack([t ** i for i in range(power, DEGREE + 1)], 1)
        weights = 1 / f
        for _ in range(30):
            solution = np.linalg.lstsq(basis * weights[:, None], rest * weights, rcond=None)[0]
            error = np.abs(basis @ solution - rest) / f
            weights = weights * (error / error.max() + 1e-3)
            weights /= weights.max()
        coefficients.append(np.float32(solution[0]))
    return coefficients


def main():
    lefts = interval_left_ends()
    rights = [min(r, 9.0) for r in lefts[1:] + [10.0]]
    rows = [fit(lo, hi, [0.0] if lo == 0 else []) for lo, hi in zip(lefts, rights)]
    rows += [rows[-1]] * (32 - len(rows))  # 32-entry tables for two-register permutes
    for power in range(DEGREE + 1):
        values = ["%.9gf" % float(row[power]) for row in rows]
        values = [v if any(c in v for c in ".e") else v[:-1] + ".0f" for v in values]
        lines = [", ".join(values[i:i + 4]) for i in range(0, 32, 4)]
        print("    {" + ",\n     ".join(lines) + "},")


if __name__ == "__main__":
    main()
