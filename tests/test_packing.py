"""INT4 packing: exact round trips, the documented nibble order, and clear errors."""

import pytest
import torch

from fptquant.errors import ConfigError
from fptquant.math.packing import pack_int4, pack_uint4, unpack_int4, unpack_uint4


@pytest.mark.parametrize("shape", [(3, 576), (2, 5, 1536), (1, 2)])
def test_int4_round_trip(shape):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    codes[..., 0], codes[..., 1] = -8, 7  # both ends of the range
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(unpack_int4(packed), codes)


def test_nibble_order():
    assert pack_int4(torch.tensor([1, -1, -8, 7])).tolist() == [0xF1, 0x78]
    assert pack_uint4(torch.tensor([3, 12])).tolist() == [0xC3]
    assert unpack_uint4(torch.tensor([0xC3], dtype=torch.uint8)).tolist() == [3, 12]


def test_packing_errors():
    with pytest.raises(ConfigError, match="even last dimension"):
        pack_int4(torch.zeros(3, 5, dtype=torch.int8))
    with pytest.raises(ConfigError, match="-8..7"):
        pack_int4(torch.tensor([8, 0]))
    with pytest.raises(ConfigError, match="0..15"):
        pack_uint4(torch.tensor([16, 0]))
