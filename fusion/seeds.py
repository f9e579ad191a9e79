"""The range of a seed, checked in one place for every config that takes one.

A seed is an integer with ``0 <= seed < 2**32``. torch's CPU generator (a Mersenne Twister) keeps only the low 32 bits
of the seed given to ``torch.manual_seed`` or ``torch.Generator.manual_seed``: measured with torch 2, ``2**32 + 5``
draws exactly what ``5`` draws and ``2**63`` what ``0`` draws, a negative seed wraps modulo ``2**64``, and from
``2**64`` on the call raises ``ValueError: Overflow when unpacking long long``. A seed outside the range would therefore
silently repeat another seed's weights or crash, so it is refused.
"""

from __future__ import annotations

import numbers

from fusion.errors import ConfigError

SEED_LIMIT = 2**32
"""Seeds are integers in ``[0, SEED_LIMIT)``."""


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an ``int`` when it is an integer in ``[0, 2**32)``; :class:`ConfigError` naming ``name``
    otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer from 0 to 2**32 - 1 = {SEED_LIMIT - 1}, got {seed!r}")
    return int(seed)
