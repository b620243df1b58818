"""torch's CPU random streams, compiled: the same numbers as ``torch.rand``, ``torch.randint``
and ``torch.randn`` with a ``torch.Generator``, several times faster.

torch's CPU generator is the Mersenne Twister MT19937 (Matsumoto & Nishimura 1998, "Mersenne
Twister: a 623-dimensionally equidistributed uniform pseudo-random number generator", ACM
TOMACS 8(1)), and its samplers turn each 32-bit word into a number one element at a time:
about 8 ns per float32 uniform here, 40 ns per float64 normal. The loops below read the
generator's state (``Generator.get_state()``: 624 words, a cursor, and a countdown to the next
twist), produce the words with the same recurrence and tempering, transform them as torch's
samplers do, and write the advanced state back, so the generator continues exactly as if torch
had drawn the numbers.

* uniform float32: the low 24 bits of a word times 2^-24; float64: the low 53 bits of
  (word1 << 32 | word2) times 2^-53; integers in [low, low + span): word % span + low. These
  are bit for bit torch's numbers (tests/test_corruption_fast_paths.py).
* normal: torch's Box-Muller over blocks of 16 uniforms (the first 8 against the last 8, the
  last block redrawn with 16 fresh uniforms when the count is not a multiple of 16), with
  logarithms and sines evaluated in float64 by :func:`_log` and :func:`_sin_cos_quadrants`
  below, which vectorize where libm calls do not. float32 normals come within one float32
  rounding step of torch's (whose own vectorized float32 functions differ by as much between
  AVX2 and AVX-512 machines); float64 normals within a few units in the last place.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_WORDS = 624  # MT19937's state size
_SHIFT = 397  # the recurrence's middle term
_STATE_BYTES = 5056  # sizeof(CPUGeneratorImplState) in torch
# Offsets into the state torch's CPU generator serializes (CPUGeneratorImplStateLegacy):
# int64 seed, int32 countdown ``left`` (words until the next twist, plus one), int32 seeded
# flag, uint64 cursor ``next``, then the 624 state words, each stored as a uint64.
_LEFT = 8
_NEXT = 16
_STATE = 24

_MATRIX = np.uint32(0x9908B0DF)
_UPPER = np.uint32(0x80000000)
_LOWER = np.uint32(0x7FFFFFFF)


def check_state_layout(state: np.ndarray) -> None:
    """Raise when ``Generator.get_state()`` is not the layout the loops read (a torch that
    changed its CPU generator): better a clear error than wrong numbers."""
    if state.dtype != np.uint8 or state.shape != (_STATE_BYTES,):
        raise RuntimeError(
            f"torch's CPU generator state is {state.dtype} of shape {state.shape}, not the "
            f"{_STATE_BYTES} bytes of MT19937 state the compiled draws read; this torch "
            "version is not supported by robustbench_bn.data.corruptions.mersenne."
        )


@numba.njit(nogil=True, cache=True, inline="always")
def _mix(first, second, far):  # pragma: no cover - compiled
    y = (first & _UPPER) | (second & _LOWER)
    return far ^ (y >> np.uint32(1)) ^ ((np.uint32(0) - (y & np.uint32(1))) & _MATRIX)


@numba.njit(nogil=True, cache=True)
def _twist(words):  # pragma: no cover - compiled
    for index in range(_WORDS - _SHIFT):
        words[index] = _mix(words[index], words[index + 1], words[index + _SHIFT])
    for index in range(_WORDS - _SHIFT, _WORDS - 1):
        words[index] = _mix(words[index], words[index + 1], words[index + _SHIFT - _WORDS])
    words[_WORDS - 1] = _mix(words[_WORDS - 1], words[0], words[_SHIFT - 1])


#: Numbers per pass: small scratch buffers are reused from the heap, where buffers of a
#: whole image (megabytes) came fresh from the kernel on every call, a page fault per 4 kB.
CHUNK = 2048


@numba.njit(nogil=True, cache=True)
def open_state(state):  # pragma: no cover - compiled
    """The state words and (cursor, words left before the next twist) from torch's bytes."""
    stored = state[_STATE : _STATE + 8 * _WORDS].view(np.uint64)
    words = np.empty(_WORDS, np.uint32)
    for index in range(_WORDS):
        words[index] = np.uint32(stored[index])
    position = np.empty(2, np.int64)
    position[0] = np.int64(state[_NEXT : _NEXT + 8].view(np.uint64)[0])
    position[1] = np.int64(state[_LEFT : _LEFT + 4].view(np.int32)[0]) - 1
    return words, position


@numba.njit(nogil=True, cache=True)
def close_state(state, words, position):  # pragma: no cover - compiled
    stored = state[_STATE : _STATE + 8 * _WORDS].view(np.uint64)
    for index in range(_WORDS):
        stored[index] = np.uint64(words[index])
    state[_NEXT : _NEXT + 8].view(np.uint64)[0] = np.uint64(position[0])
    state[_LEFT : _LEFT + 4].view(np.int32)[0] = np.int32(position[1] + 1)


@numba.njit(nogil=True, cache=True)
def _next_words(words, position, out):  # pragma: no cover - compiled
    """Fill ``out`` with the generator's next tempered 32-bit words."""
    done = 0
    while done < out.size:
        if position[1] == 0:
            _twist(words)
            position[0] = 0
            position[1] = _WORDS
        take = min(position[1], out.size - done)
        block = words[position[0] : position[0] + take]
        target = out[done : done + take]
        for index in range(take):
            y = block[index]
            y ^= y >> np.uint32(11)
            y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
            y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
            y ^= y >> np.uint32(18)
            target[index] = y
        position[0] += take
        position[1] -= take
        done += take


@numba.njit(nogil=True, cache=True, inline="always")
def _float32_uniform(word):  # pragma: no cover - compiled
    # The low 24 bits are exact in float32 and the scale is a power of two, so float32
    # arithmetic gives torch's number exactly; through int32, the conversion vectorizes
    # (0.6 of the time of the float64 product here).
    return np.float32(np.int32(word & np.uint32(0xFFFFFF))) * np.float32(1.0 / 16777216.0)


@numba.njit(nogil=True, cache=True, inline="always")
def _float64_uniform(high, low):  # pragma: no cover - compiled
    both = (np.uint64(high) << np.uint64(32)) | np.uint64(low)
    return np.float64(both & np.uint64((1 << 53) - 1)) * (1.0 / 9007199254740992.0)


@numba.njit(nogil=True, cache=True)
def uniform_float32(state, out):  # pragma: no cover - compiled
    """``torch.rand(out.shape, generator=g)`` for float32 ``out`` (1-D view)."""
    words, position = open_state(state)
    buffer = np.empty(CHUNK, np.uint32)
    for start in range(0, out.size, CHUNK):
        float32_uniforms(words, position, buffer, out[start : start + CHUNK])
    close_state(state, words, position)


@numba.njit(nogil=True, cache=True)
def uniform_float32_scaled(state, out, span, low):  # pragma: no cover - compiled
    """``torch.rand(out.shape, generator=g) * span + low`` for float32 ``out`` (1-D view): the
    multiply and the add each rounded to float32, as torch's two tensor operations do."""
    words, position = open_state(state)
    buffer = np.empty(CHUNK, np.uint32)
    scale, offset = np.float32(span), np.float32(low)
    for start in range(0, out.size, CHUNK):
        target = out[start : start + CHUNK]
        float32_uniforms(words, position, buffer, target)
        for index in range(target.size):
            target[index] = target[index] * scale + offset
    close_state(state, words, position)


@numba.njit(nogil=True, cache=True)
def float32_uniforms(words, position, buffer, target):  # pragma: no cover - compiled
    chunk = buffer[: target.size]
    _next_words(words, position, chunk)
    for index in range(target.size):
        target[index] = _float32_uniform(chunk[index])


@numba.njit(nogil=True, cache=True)
def float64_uniforms(words, position, buffer, target):  # pragma: no cover - compiled
    pairs = buffer[: 2 * target.size]
    _next_words(words, position, pairs)
    for index in range(target.size):
        target[index] = _float64_uniform(pairs[2 * index], pairs[2 * index + 1])


@numba.njit(nogil=True, cache=True)
def uniform_float64(state, out):  # pragma: no cover - compiled
    """``torch.rand(out.shape, generator=g, dtype=torch.float64)``."""
    words, position = open_state(state)
    buffer = np.empty(2 * CHUNK, np.uint32)
    for start in range(0, out.size, CHUNK):
        float64_uniforms(words, position, buffer, out[start : start + CHUNK])
    close_state(state, words, position)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def integer_chunk(words, position, buffer, target, low, span):  # pragma: no cover - compiled
    """Fill ``target`` (up to CHUNK numbers, any integer dtype that holds them) with the
    generator's next integers in [low, low + span), span below 2^28."""
    chunk = buffer[: target.size]
    _next_words(words, position, chunk)
    if span <= 1 << 20:
        # floor(word / span) in float64 is exact here (the quotient's fraction is at least
        # 1 / span from the next integer, more than half a unit in the last place of any
        # quotient below 2^32), and it vectorizes where the integer remainder does not.
        for index in range(chunk.size):
            word = np.float64(chunk[index])
            target[index] = np.int64(word - np.floor(word / span) * span) + low
    else:
        divisor = np.uint32(span)
        for index in range(chunk.size):
            target[index] = np.int64(chunk[index] % divisor) + low


@numba.njit(nogil=True, cache=True)
def integers(state, out, low, span):  # pragma: no cover - compiled
    """``torch.randint(low, low + span, out.shape, generator=g)`` for int64 ``out``, span
    below 2^28 (torch draws one word per number there, two from 2^28 on)."""
    words, position = open_state(state)
    buffer = np.empty(CHUNK, np.uint32)
    for start in range(0, out.size, CHUNK):
        integer_chunk(words, position, buffer, out[start : start + CHUNK], low, span)
    close_state(state, words, position)


_LN2 = math.log(2.0)
_SQRT_HALF_BITS = np.int64(np.array([math.sqrt(0.5)]).view(np.int64)[0])
# pi/2 in two parts (Cody & Waite): quadrant * _HALF_PI_HIGH is exact for quadrants 0..4.
_HALF_PI_HIGH = 1.5707963267341256
_HALF_PI_LOW = math.pi / 2 - _HALF_PI_HIGH
_TWO_PI_FLOAT32 = np.float32(2 * math.pi)
# Taylor coefficients of sin(r) / r and cos(r) in r^2, highest first: to r^17 and r^16,
# whose next terms stay below 1e-17 for |r| <= pi / 4.
_SINE = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(8, -1, -1))
_COSINE = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(8, -1, -1))
# log(m) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ...), to s^21: |s| <= 0.172 leaves < 1e-17.
_ATANH = tuple(1.0 / (2 * k + 1) for k in range(10, -1, -1))


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _logs_in_place(values, scratch):  # pragma: no cover - compiled
    """values[i] = log(values[i]) for positive normal float64 values, in loops that vectorize
    (libm calls do not). v = m 2^e with m in [sqrt(1/2), sqrt(2)): subtracting sqrt(1/2)'s
    bits from v's leaves e in the exponent field, and v's bits minus e there are m's."""
    bits = values.view(np.int64)
    mantissa_bits = scratch.view(np.int64)
    for index in range(values.size):
        word = bits[index]
        exponent = (word - _SQRT_HALF_BITS) >> 52
        mantissa_bits[index] = word - (exponent << 52)
        values[index] = np.float64(exponent)
    for index in range(values.size):
        mantissa = scratch[index]
        s = (mantissa - 1.0) / (mantissa + 1.0)
        z = s * s
        series = 0.0
        for coefficient in _ATANH:
            series = series * z + coefficient
        values[index] = values[index] * _LN2 + 2.0 * s * series


@numba.njit(nogil=True, cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _sin_cos(angle):  # pragma: no cover - compiled
    """(sin, cos) of a float64 angle in [0, 2 pi]: reduced by the nearest multiple of pi/2 to
    |r| <= pi/4, the two series, then turned by that many quarter turns (branch-free, so the
    loop calling it vectorizes)."""
    quadrant = np.floor(angle * (2.0 / math.pi) + 0.5)
    r = (angle - quadrant * _HALF_PI_HIGH) - quadrant * _HALF_PI_LOW
    z = r * r
    sine = 0.0
    for coefficient in _SINE:
        sine = sine * z + coefficient
    sine *= r
    cosine = 0.0
    for coefficient in _COSINE:
        cosine = cosine * z + coefficient
    turns = np.int64(quadrant)
    swapped = (turns & 1) == 1
    sine_sign = np.float64(1 - 2 * ((turns >> 1) & 1))
    cosine_sign = np.float64(1 - 2 * (((turns + 1) >> 1) & 1))
    return (
        sine_sign * (cosine if swapped else sine),
        cosine_sign * (sine if swapped else cosine),
    )


def _box_muller_for(single: bool):
    """torch's Box-Muller over blocks of 16 uniforms, compiled for float32 (``single``: each
    step rounded to float32 like torch's float32 sampler) or float64 (a flag checked inside
    the loops would keep them from vectorizing).

    Lane j of a block pairs u1 = lane j with u2 = lane j + 8 into sqrt(-2 log(1 - u1))
    (cos, sin)(2 pi u2), written to lanes j and j + 8 of ``out`` (the uniforms' length, a
    multiple of 16); ``logs``, ``angles``, ``scratch`` and ``cosines`` hold half as many.
    """

    @numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
    def box_muller(uniforms, out, logs, angles, scratch, cosines):  # pragma: no cover - compiled
        pairs = uniforms.size // 2
        logs = logs[:pairs]
        angles = angles[:pairs]
        cosines = cosines[:pairs]
        for block in range(pairs // 8):
            for lane in range(8):
                first = uniforms[16 * block + lane]
                second = uniforms[16 * block + 8 + lane]
                if single:
                    logs[8 * block + lane] = np.float32(1) - np.float32(first)
                    angles[8 * block + lane] = _TWO_PI_FLOAT32 * np.float32(second)
                else:
                    logs[8 * block + lane] = 1.0 - first
                    angles[8 * block + lane] = 2.0 * math.pi * second
        _logs_in_place(logs, scratch[:pairs])
        for index in range(pairs):
            sine, cosine = _sin_cos(angles[index])
            if single:
                radius = np.float32(math.sqrt(np.float32(-2) * np.float32(logs[index])))
                cosines[index] = radius * np.float32(cosine)
                logs[index] = radius * np.float32(sine)
            else:
                radius = math.sqrt(-2.0 * logs[index])
                cosines[index] = radius * cosine
                logs[index] = radius * sine
        for block in range(pairs // 8):
            for lane in range(8):
                out[16 * block + lane] = cosines[8 * block + lane]
                out[16 * block + 8 + lane] = logs[8 * block + lane]

    return box_muller


_box_muller_float32 = _box_muller_for(single=True)
_box_muller_float64 = _box_muller_for(single=False)


def _normal_for(single: bool):
    """``torch.randn`` for 16 or more numbers: torch draws all the uniforms, runs Box-Muller
    over the whole blocks of 16, and when the count is not a multiple of 16 draws 16 more for
    the last 16 numbers (the leftover uniforms are drawn and overwritten)."""
    box_muller = _box_muller_float32 if single else _box_muller_float64
    uniform_chunk = float32_uniforms if single else float64_uniforms
    dtype = np.float32 if single else np.float64

    @numba.njit(nogil=True, cache=True)
    def fill(words, position, out):  # pragma: no cover - compiled
        buffer = np.empty(2 * CHUNK, np.uint32)
        uniforms = np.empty(CHUNK, dtype)
        halves = [np.empty(CHUNK // 2, np.float64) for _ in range(4)]
        whole = out.size - out.size % 16
        for start in range(0, whole, CHUNK):
            count = min(CHUNK, whole - start)
            uniform_chunk(words, position, buffer, uniforms[:count])
            target = out[start : start + count]
            box_muller(uniforms[:count], target, halves[0], halves[1], halves[2], halves[3])
        if whole < out.size:
            # Drawn and overwritten, then 16 fresh uniforms for the last 16 numbers.
            uniform_chunk(words, position, buffer, uniforms[: out.size - whole])
            uniform_chunk(words, position, buffer, uniforms[:16])
            target = out[out.size - 16 :]
            box_muller(uniforms[:16], target, halves[0], halves[1], halves[2], halves[3])

    @numba.njit(nogil=True, cache=True)
    def normal(state, out):  # pragma: no cover - compiled
        words, position = open_state(state)
        fill(words, position, out)
        close_state(state, words, position)

    return fill, normal


normal_fill_float32, normal_float32 = _normal_for(single=True)
normal_float32.__doc__ = """``torch.randn(out.shape, generator=g)`` for float32 ``out`` of 16
or more numbers, each within one float32 rounding step of torch's."""
normal_fill_float64, normal_float64 = _normal_for(single=False)
