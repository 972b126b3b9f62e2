"""``pragma_core.parallel.run_parallel``: every item runs, results keep their order, every failure is reported."""

from __future__ import annotations

import threading

import pytest

from pragma_core.errors import (
    CapacityError,
    ConfigError,
    DriverError,
    NotFoundError,
    PragmaError,
)
from pragma_core.parallel import MAX_NAMED_FAILURES, ParallelError, run_parallel
from pragma_core.pluginkit import ParallelError as KitParallelError
from pragma_core.pluginkit import run_parallel as kit_run_parallel

#: Generous bound on waiting for the other threads: only a hang reaches it.
HANG = 30.0


def fail_odd(error: type[PragmaError] = DriverError):
    def work(i: int) -> int:
        if i % 2:
            raise error(f"item {i} broke")
        return i * 10

    return work


def test_the_plugin_kit_exports_the_same_helper() -> None:
    assert (kit_run_parallel, KitParallelError) == (run_parallel, ParallelError)


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_results_come_back_in_the_order_of_the_items(workers: int) -> None:
    assert run_parallel(lambda i: i * i, range(7), workers=workers) == [0, 1, 4, 9, 16, 25, 36]


def test_no_items_give_no_results() -> None:
    assert run_parallel(lambda i: i, [], workers=4) == []


def test_items_run_at_once_on_as_many_threads_as_workers() -> None:
    barrier = threading.Barrier(3, timeout=HANG)  # broken (an error) unless three items wait in it together
    assert run_parallel(lambda i: (barrier.wait(), i)[1], range(3), workers=3) == [0, 1, 2]


@pytest.mark.parametrize("workers", [1, 3])
def test_one_item_or_one_worker_runs_in_the_calling_thread(workers: int) -> None:
    items = [1] if workers == 3 else [1, 2, 3]
    threads = run_parallel(lambda _: threading.get_ident(), items, workers=workers)
    assert set(threads) == {threading.get_ident()}


@pytest.mark.parametrize("workers", [1, 4])
def test_every_item_runs_even_after_a_failure(workers: int) -> None:
    ran: list[int] = []

    def work(i: int) -> None:
        ran.append(i)
        if i == 0:
            raise DriverError("first broke")

    with pytest.raises(DriverError):
        run_parallel(work, range(6), workers=workers)
    assert sorted(ran) == list(range(6))


@pytest.mark.parametrize("workers", [1, 4])
def test_a_single_failure_is_raised_as_it_is(workers: int) -> None:
    boom = NotFoundError("no such node")

    def work(i: int) -> int:
        if i == 2:
            raise boom
        return i

    with pytest.raises(NotFoundError) as info:
        run_parallel(work, range(4), workers=workers)
    assert info.value is boom


@pytest.mark.parametrize("workers", [1, 4])
def test_several_failures_are_one_error_naming_each_in_item_order(workers: int) -> None:
    with pytest.raises(ParallelError) as info:
        run_parallel(fail_odd(), range(6), workers=workers, label=lambda i: f"node-{i}", what="nodes")
    error = info.value
    assert str(error) == "3 of 6 nodes failed: node-1: item 1 broke; node-3: item 3 broke; node-5: item 5 broke"
    assert [str(e) for e in error.exceptions] == ["item 1 broke", "item 3 broke", "item 5 broke"]
    assert isinstance(error, ExceptionGroup) and isinstance(error, PragmaError)


@pytest.mark.parametrize(
    ("errors", "caught_as", "not_caught_as"),
    [
        ([CapacityError, CapacityError], CapacityError, NotFoundError),
        ([CapacityError, DriverError], DriverError, CapacityError),
        ([DriverError, NotFoundError], PragmaError, DriverError),
        ([ConfigError, ConfigError], PragmaError, ConfigError),  # ConfigError(message, path=...) is not rebuilt
    ],
)
def test_several_failures_are_an_instance_of_the_class_they_all_share(errors, caught_as, not_caught_as) -> None:
    def work(i: int) -> None:
        raise errors[i](f"failure {i}")

    with pytest.raises(caught_as) as info:
        run_parallel(work, range(len(errors)), workers=2)
    assert isinstance(info.value, ParallelError)
    assert not isinstance(info.value, not_caught_as)


def test_a_class_whose_constructor_sets_attributes_is_shared_only_when_they_agree() -> None:
    def full(reserved: tuple[str, ...]):
        def work(i: int) -> None:
            raise CapacityError("no CPUs left", reserved=reserved if i else ("vc-1",))

        return work

    with pytest.raises(CapacityError) as same:
        run_parallel(full(("vc-1",)), range(2), workers=2)
    assert isinstance(same.value, ParallelError) and same.value.reserved == ("vc-1",)
    with pytest.raises(DriverError) as different:
        run_parallel(full(()), range(2), workers=2)
    assert not isinstance(different.value, CapacityError) and not hasattr(different.value, "reserved")


def test_a_failure_that_is_no_pragma_error_makes_a_plain_exception_group() -> None:
    def work(i: int) -> None:
        raise (DriverError("refused") if i else ValueError("a bug"))

    with pytest.raises(ExceptionGroup) as info:
        run_parallel(work, range(2), workers=2)
    assert not isinstance(info.value, PragmaError)
    assert [type(e) for e in info.value.exceptions] == [ValueError, DriverError]
    assert "ValueError: a bug" in str(info.value)


def test_except_star_splits_the_failures_by_class() -> None:
    def work(i: int) -> None:
        raise (CapacityError if i % 2 else NotFoundError)(f"failure {i}")

    caught: list[str] = []
    with pytest.raises(ParallelError) as rest:
        try:
            run_parallel(work, range(4), workers=4)
        except* CapacityError as group:
            caught = [str(e) for e in group.exceptions]
            assert isinstance(group, CapacityError)
    assert caught == ["failure 1", "failure 3"]
    assert [str(e) for e in rest.value.exceptions] == ["failure 0", "failure 2"]


def test_the_message_counts_repeated_failures_and_stays_bounded() -> None:
    def same(i: int) -> None:
        raise DriverError("CloudStack refused: no capacity")

    with pytest.raises(ParallelError, match=r"^5 of 5 tasks failed: CloudStack refused: no capacity \(5 times\)$"):
        run_parallel(same, range(5), workers=2)

    def distinct(i: int) -> None:
        raise DriverError(f"failure {i}")

    with pytest.raises(ParallelError) as info:
        run_parallel(distinct, range(MAX_NAMED_FAILURES + 3), workers=4)
    assert str(info.value).endswith("; and 3 more")
    assert len(info.value.exceptions) == MAX_NAMED_FAILURES + 3


def test_a_secret_in_a_failure_is_masked_in_the_message() -> None:
    from pragma_core.redaction import register_secret

    secret = "s3cr3t-parallel-token-value"
    register_secret(secret, name="test")

    def work(i: int) -> None:
        raise DriverError(f"call with {secret} failed ({i})")

    with pytest.raises(ParallelError) as info:
        run_parallel(work, range(2), workers=2)
    assert secret not in str(info.value)


def test_keyboard_interrupt_in_the_calling_thread_stops_the_run() -> None:
    ran: list[int] = []

    def work(i: int) -> None:
        ran.append(i)
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_parallel(work, range(5), workers=1)
    assert ran == [0, 1]


def test_a_base_exception_from_a_worker_is_raised_as_it_is() -> None:
    def work(i: int) -> None:
        if i == 1:
            raise SystemExit(3)
        raise DriverError("also broke")

    with pytest.raises(SystemExit):
        run_parallel(work, range(3), workers=3)
