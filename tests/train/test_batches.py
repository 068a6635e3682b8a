import torch

from transgan.train.batches import IndexStream


def test_each_epoch_is_a_permutation():
    s = IndexStream(n=10, batch_size=5, seed=3)
    first = torch.cat([s.next_batch(), s.next_batch()])
    assert sorted(first.tolist()) == list(range(10))
    second = torch.cat([s.next_batch(), s.next_batch()])
    assert sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)


def test_stream_resumes_at_any_position():
    full = IndexStream(n=7, batch_size=4, seed=0)
    batches = [full.next_batch() for _ in range(6)]  # spans several epochs, batches straddle them
    for k in range(6):
        resumed = IndexStream(n=7, batch_size=4, seed=0, position=4 * k)
        for j in range(k, 6):
            assert torch.equal(resumed.next_batch(), batches[j])
