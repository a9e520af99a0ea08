"""Interesting values for mutations: integers near edges, floats, JSON oddities, hostile templates."""

from __future__ import annotations

import random

INT_EDGES = [0, 1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1]
FLOAT_EDGES = [0.0, -0.0, -1.0, 1.0, 0.5, 1e-30, 1e30, 3.4e38, float("nan"), float("inf")]


def int_near(rng: random.Random, current: int, width: int) -> int:
    """A value for an unsigned ``width``-byte field holding ``current`` (wraps like C)."""
    mask = (1 << (8 * width)) - 1
    choice = rng.randrange(10)
    if choice == 0:
        v = current + 1
    elif choice == 1:
        v = current - 1  # 0 - 1 wraps to all ones: a "negative" length
    elif choice == 2:
        v = current * 2 + rng.randrange(2)
    elif choice == 3:
        v = current // 2
    elif choice == 4:
        v = mask  # -1
    elif choice == 5:
        v = 1 << (8 * width - 1)  # INT_MIN / 2^63
    elif choice == 6:
        v = rng.getrandbits(8 * width)
    elif choice == 7:
        v = current + rng.choice([-8, -4, 4, 8, 32, 64, 4096])
    else:
        v = rng.choice(INT_EDGES)
    return v & mask


def json_int_near(rng: random.Random, current: object) -> object:
    """A JSON value for a config key that normally holds an int."""
    cur = current if isinstance(current, int) and not isinstance(current, bool) else 4
    return rng.choice(
        [
            cur + 1,
            cur - 1,
            cur * 2,
            cur // 2,
            0,
            -1,
            -cur,
            1,
            3,
            2**31,
            2**63,
            2**64 + 1,
            10**30,
            float(cur),
            cur + 0.5,
            str(cur),
            None,
            True,
            False,
            [cur],
            {"v": cur},
            float("nan"),
            float("inf"),
        ]
    )


def json_odd(rng: random.Random) -> object:
    """Any JSON-ish value of a surprising type."""
    return rng.choice(
        [None, True, 0, -1, 2**64, 1.5, float("nan"), "", "x" * 300, [], [None], {}, {"a": []}]
    )


# Chat templates that must end in a typed error (or render), never a crash or a hang.
HOSTILE_TEMPLATES = [
    "{% for %}",
    "{{ raise_exception('template says no') }}",
    "{{ messages[7]['content'].upper() }}",
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__ }}",
    "{% set x = [] %}{% set _ = x.append(1) %}{{ x }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{{ 2 ** 99999999999 }}",
    "{{ ('x' | center(2000000000)) }}",
    "{{ '%2000000000d' | format(1) }}",
    "{{ '{0:>2000000000}'.format_map({'0': 1}) }}",
    "{{ (messages | tojson) * 100000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ '{:>2000000000}'.format('a') }}",
    "{{ '%2000000000d' % 1 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ range(10 ** 12) | list }}",
    "{{ strftime_now('%Y-%m-%d') }}{% for m in messages %}{{ m.role }}{% endfor %}",
    "{{ bos_token }}{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}",
    "{% for m in messages %}{{ m.content[::-1] }}{% endfor %}{{ undefined_name.attr }}",
    "{% include 'other.jinja' %}",
    "{% extends 'base.jinja' %}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ 1 / 0 }}",
    "{{ messages | map(attribute='role') | join('\u0000') }}",
    "{{ '\udcff' }}",
]


def template(rng: random.Random) -> str:
    """A hostile chat template."""
    return rng.choice(HOSTILE_TEMPLATES)
