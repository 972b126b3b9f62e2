"""The private address plan: the Rocks convention the images expect, with real netmask arithmetic."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pragma_core.addressing import AddressPlan, frontend_address, parse_cidr, plan_addresses
from pragma_core.errors import CapacityError, FormatError

A = IPv4Address
N = IPv4Network


# --------------------------------------------------------------------------- the convention


def test_rocks_16_gives_frontend_1_1_and_computes_counting_down_from_255_254() -> None:
    plan = plan_addresses(N("10.1.0.0/16"), 3)
    assert plan == AddressPlan(
        frontend=A("10.1.1.1"), computes=(A("10.1.255.254"), A("10.1.255.253"), A("10.1.255.252"))
    )
    assert plan.all == (A("10.1.1.1"), A("10.1.255.254"), A("10.1.255.253"), A("10.1.255.252"))


def test_a_24_gives_frontend_dot1_and_computes_from_dot254() -> None:
    plan = plan_addresses(N("192.168.10.0/24"), 2)
    assert plan.frontend == A("192.168.10.1")
    assert plan.computes == (A("192.168.10.254"), A("192.168.10.253"))


def test_a_full_24_never_hands_the_frontend_address_to_a_compute() -> None:
    plan = plan_addresses(N("192.168.10.0/24"), 253)
    assert plan.frontend == A("192.168.10.1")
    assert plan.computes[-1] == A("192.168.10.2")
    assert A("192.168.10.1") not in plan.computes
    assert len(set(plan.computes)) == 253


def test_a_24_with_254_computes_raises_capacity_error_with_the_numbers() -> None:
    with pytest.raises(CapacityError) as info:
        plan_addresses(N("192.168.10.0/24"), 254)
    message = str(info.value)
    assert "192.168.10.0/24" in message
    assert "255 needed" in message
    assert "254 free" in message


def test_a_subnet_with_an_inner_zero_octet_is_not_mangled() -> None:
    plan = plan_addresses(N("10.0.5.0/24"), 2)
    assert plan.frontend == A("10.0.5.1")
    assert plan.computes == (A("10.0.5.254"), A("10.0.5.253"))


def test_an_8_sets_the_low_bit_of_every_host_octet() -> None:
    plan = plan_addresses(N("10.0.0.0/8"), 1)
    assert plan.frontend == A("10.1.1.1")
    assert plan.computes == (A("10.255.255.254"),)


def test_the_upper_half_of_a_split_24_starts_at_its_own_network_address() -> None:
    plan = plan_addresses(N("10.0.0.128/25"), 1)
    assert plan.frontend == A("10.0.0.129")
    assert plan.computes == (A("10.0.0.254"),)
    assert frontend_address(N("10.0.0.128/25")) == A("10.0.0.129")


def test_a_30_holds_exactly_a_frontend_and_one_compute() -> None:
    assert plan_addresses(N("10.9.9.4/30"), 1) == AddressPlan(frontend=A("10.9.9.5"), computes=(A("10.9.9.6"),))
    with pytest.raises(CapacityError):
        plan_addresses(N("10.9.9.4/30"), 2)


@pytest.mark.parametrize("subnet", ["10.9.9.4/31", "10.9.9.4/32"])
def test_31_and_32_have_no_host_address_to_hand_out(subnet: str) -> None:
    with pytest.raises(CapacityError, match="0 free"):
        plan_addresses(N(subnet), 0)


def test_counting_past_255_1_continues_with_real_host_addresses_of_a_16() -> None:
    plan = plan_addresses(N("10.1.0.0/16"), 256)
    assert plan.computes[253] == A("10.1.255.1")
    assert plan.computes[254] == A("10.1.255.0")
    assert plan.computes[255] == A("10.1.254.255")


def test_a_frontend_only_cluster_gets_no_compute_addresses() -> None:
    assert plan_addresses(N("10.1.0.0/16"), 0) == AddressPlan(frontend=A("10.1.1.1"))


def test_a_subnet_given_as_text_is_accepted() -> None:
    assert plan_addresses("10.1.0.0/16", 0).frontend == A("10.1.1.1")


def test_a_subnet_with_host_bits_set_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IPv4 subnet"):
        plan_addresses("10.1.0.5/16", 0)


def test_a_negative_compute_count_is_refused() -> None:
    with pytest.raises(ValueError, match="computes"):
        plan_addresses(N("10.1.0.0/16"), -1)


# --------------------------------------------------------------------------- exclude


def test_an_excluded_gateway_is_skipped_by_the_computes() -> None:
    plan = plan_addresses(N("10.1.0.0/24"), 2, exclude=[A("10.1.0.254")])
    assert plan.computes == (A("10.1.0.253"), A("10.1.0.252"))


def test_an_excluded_conventional_frontend_address_moves_the_frontend_up() -> None:
    plan = plan_addresses(N("10.1.0.0/24"), 1, exclude=[A("10.1.0.1"), A("10.1.0.2")])
    assert plan.frontend == A("10.1.0.3")
    assert plan.computes == (A("10.1.0.254"),)


def test_exclusions_outside_the_subnet_do_not_reduce_capacity() -> None:
    plan = plan_addresses(N("10.9.9.4/30"), 1, exclude=[A("10.9.9.1"), A("10.9.9.4"), A("10.9.9.7")])
    assert plan.all == (A("10.9.9.5"), A("10.9.9.6"))


def test_exclusions_count_against_capacity() -> None:
    with pytest.raises(CapacityError, match="1 excluded"):
        plan_addresses(N("10.9.9.4/30"), 1, exclude=[A("10.9.9.6")])


# --------------------------------------------------------------------------- start


def test_a_start_address_goes_to_the_frontend_and_computes_count_up_from_it() -> None:
    plan = plan_addresses(N("10.102.0.0/24"), 3, start=A("10.102.0.10"))
    assert plan.frontend == A("10.102.0.10")
    assert plan.computes == (A("10.102.0.11"), A("10.102.0.12"), A("10.102.0.13"))


def test_counting_up_from_start_skips_excluded_addresses() -> None:
    plan = plan_addresses(N("10.102.0.0/24"), 2, start=A("10.102.0.10"), exclude=[A("10.102.0.11")])
    assert plan.computes == (A("10.102.0.12"), A("10.102.0.13"))


def test_counting_up_from_start_never_wraps_below_start() -> None:
    assert plan_addresses(N("10.102.0.0/24"), 2, start=A("10.102.0.252")).computes == (
        A("10.102.0.253"),
        A("10.102.0.254"),
    )
    with pytest.raises(CapacityError, match="from 10.102.0.252: 4 needed"):
        plan_addresses(N("10.102.0.0/24"), 3, start=A("10.102.0.252"))


def test_an_excluded_start_address_is_a_capacity_error() -> None:
    with pytest.raises(CapacityError, match="already in use"):
        plan_addresses(N("10.102.0.0/24"), 1, start=A("10.102.0.10"), exclude=[A("10.102.0.10")])


@pytest.mark.parametrize("start", ["10.103.0.10", "10.102.0.0", "10.102.0.255"])
def test_a_start_that_is_not_a_host_of_the_subnet_is_refused(start: str) -> None:
    with pytest.raises(ValueError, match="not a host address"):
        plan_addresses(N("10.102.0.0/24"), 1, start=A(start))


# --------------------------------------------------------------------------- parse_cidr


def test_parse_cidr_gives_the_network_and_the_host_part_as_start() -> None:
    assert parse_cidr("10.102.0.10/24") == (N("10.102.0.0/24"), A("10.102.0.10"))


def test_parse_cidr_gives_no_start_when_the_host_part_is_zero() -> None:
    assert parse_cidr(" 10.102.0.0/24 ") == (N("10.102.0.0/24"), None)


def test_parse_cidr_accepts_a_dotted_netmask() -> None:
    assert parse_cidr("10.102.0.10/255.255.255.0") == (N("10.102.0.0/24"), A("10.102.0.10"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.102.0.10", "no prefix length"),
        ("", "empty value"),
        ("10.102.0.0/33", "not an IPv4 subnet"),
        ("10.102.0/24", "not an IPv4 subnet"),
        ("fd00::1/64", "not IPv4"),
        ("10.102.0.255/24", "broadcast address"),
        ("openflow/24", "not an IPv4 subnet"),
    ],
)
def test_parse_cidr_names_the_problem_and_the_setting(text: str, problem: str) -> None:
    with pytest.raises(FormatError, match=problem) as info:
        parse_cidr(text, what="add-iface openflow")
    assert str(info.value).startswith("add-iface openflow: ")


# --------------------------------------------------------------------------- properties


@st.composite
def subnets(draw: st.DrawFn, min_prefix: int = 8, max_prefix: int = 30) -> IPv4Network:
    prefix = draw(st.integers(min_prefix, max_prefix))
    address = draw(st.integers(0, 2**32 - 1))
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return IPv4Network((address & mask, prefix))


def host_count(subnet: IPv4Network) -> int:
    return max(0, subnet.num_addresses - 2)


@st.composite
def requests(draw: st.DrawFn) -> tuple[IPv4Network, int, list[IPv4Address]]:
    """A subnet, a cluster size around the subnet's capacity (or up to 600), and a few exclusions."""
    subnet = draw(subnets())
    size = host_count(subnet)
    computes = draw(st.integers(0, min(size, 600) + 2))
    base = int(subnet.network_address)
    offsets = st.integers(0, subnet.num_addresses - 1)
    near_ends = st.sampled_from([0, 1, 2, subnet.num_addresses - 2, subnet.num_addresses - 1])
    exclude = draw(st.lists(st.one_of(offsets, near_ends).map(lambda o: A(base + o)), max_size=5))
    if draw(st.booleans()):
        exclude.append(frontend_address(subnet))
    return subnet, computes, exclude


@settings(max_examples=200, deadline=None)
@given(requests())
def test_plans_are_unique_inside_the_subnet_and_fail_exactly_when_it_is_too_small(
    request: tuple[IPv4Network, int, list[IPv4Address]],
) -> None:
    subnet, computes, exclude = request
    hosts = [a for a in set(exclude) if a in subnet and a not in (subnet.network_address, subnet.broadcast_address)]
    free = host_count(subnet) - len(hosts)
    if 1 + computes > free:
        event("subnet too small")
        with pytest.raises(CapacityError):
            plan_addresses(subnet, computes, exclude=exclude)
        return
    event("planned")
    plan = plan_addresses(subnet, computes, exclude=exclude)
    every = plan.all
    assert len(plan.computes) == computes
    assert len(set(every)) == len(every)
    assert plan.frontend not in plan.computes
    for address in every:
        assert address in subnet
        assert address not in (subnet.network_address, subnet.broadcast_address)
        assert address not in exclude
    if frontend_address(subnet) not in exclude:
        assert plan.frontend == frontend_address(subnet)
    assert list(plan.computes) == sorted(plan.computes, reverse=True)
    if plan.computes and subnet.broadcast_address - 1 not in exclude and subnet.broadcast_address - 1 != plan.frontend:
        assert plan.computes[0] == subnet.broadcast_address - 1


@st.composite
def start_requests(draw: st.DrawFn) -> tuple[IPv4Network, IPv4Address, int, list[IPv4Address]]:
    subnet = draw(subnets(max_prefix=30))
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - 1
    start = A(draw(st.integers(first, last)))
    room = last - int(start)
    computes = draw(st.integers(0, min(room, 400) + 2))
    exclude = draw(st.lists(st.integers(int(start) + 1, last + 1).map(A), max_size=4))
    return subnet, start, computes, exclude


@settings(max_examples=200, deadline=None)
@given(start_requests())
def test_plans_from_a_start_count_up_and_fail_exactly_when_the_rest_is_too_small(
    request: tuple[IPv4Network, IPv4Address, int, list[IPv4Address]],
) -> None:
    subnet, start, computes, exclude = request
    hosts_above = [a for a in set(exclude) if start < a < subnet.broadcast_address]
    free = int(subnet.broadcast_address) - int(start) - len(hosts_above)
    if 1 + computes > free:
        event("too little room above start")
        with pytest.raises(CapacityError):
            plan_addresses(subnet, computes, start=start, exclude=exclude)
        return
    event("planned")
    plan = plan_addresses(subnet, computes, start=start, exclude=exclude)
    assert plan.frontend == start
    assert len(plan.computes) == computes
    assert list(plan.computes) == sorted(set(plan.computes))
    for address in plan.computes:
        assert start < address < subnet.broadcast_address
        assert address not in exclude
