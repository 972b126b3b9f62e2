"""Request signing: fixed vectors worked out by hand, and agreement with independent implementations."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cloudstack_simulator import CloudStackSimulator, java_url_encoder, server_signature

from pragma_cloudstack.signing import expires_at, java_urlencode, sign, signed_params, string_to_sign

SECRET = "VDaACYb0LV9eNjTetIOElcVQkvJck_J_QljX_FcHRj87ZKiy0z0ty0ZsYBkoXkY9b7eq1EhwJaw7FF3akA3KBQ"
API_KEY = "miVr6X7u6bN_sdahOBpjNejPgEsT35eXq-jB8CG20YI3yaxXcgpyuaIRmFI_EJTVwZ0nUkkJbPmY3y2bciKwFQ"


def hmac_b64(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


def test_vector_sorts_names_as_sent_encodes_like_java_and_lowercases_everything() -> None:
    params = {
        "command": "listVirtualMachines",
        "apiKey": API_KEY,
        "response": "json",
        "name": "vc 1/a~b*c+d",
        "SupportedServices": "SourceNat",
    }
    # By hand: "SupportedServices" sorts first (upper case before lower case);
    # space -> %20, '/' -> %2F, '~' -> %7E, '*' stays, '+' -> %2B; then all lower case.
    literal = (
        "supportedservices=sourcenat"
        "&apikey=mivr6x7u6bn_sdahobpjnejpgest35exq-jb8cg20yi3yaxxcgpyuairmfi_ejtvwz0nukkjbpmy3y2bcikwfq"
        "&command=listvirtualmachines"
        "&name=vc%201%2fa%7eb*c%2bd"
        "&response=json"
    )
    assert string_to_sign(params) == literal
    assert sign(params, SECRET) == hmac_b64(SECRET, literal)
    assert server_signature(params, SECRET) == hmac_b64(SECRET, literal)


def test_vector_with_utf8_value_and_equals_sign() -> None:
    params = {"apikey": "k", "command": "createTags", "tags[0].value": "café=1"}
    literal = "apikey=k&command=createtags&tags[0].value=caf%c3%a9%3d1"
    assert string_to_sign(params) == literal
    assert sign(params, "s3cr3t") == hmac_b64("s3cr3t", literal)


def test_signed_params_add_signature_version_3_and_expires() -> None:
    signed = signed_params("listZones", {"available": "true"}, api_key="k", secret_key="s", expires_after=600, now=0)
    assert signed["signatureVersion"] == "3"
    assert signed["expires"] == "1970-01-01T00:10:00+0000"
    literal = (
        "apikey=k&available=true&command=listzones&expires=1970-01-01t00%3a10%3a00%2b0000"
        "&response=json&signatureversion=3"
    )
    assert signed["signature"] == hmac_b64("s", literal)


def test_signed_params_without_expiry_is_the_old_scheme() -> None:
    signed = signed_params("listZones", {}, api_key="k", secret_key="s", expires_after=None)
    assert "expires" not in signed and "signatureVersion" not in signed
    assert signed["signature"] == hmac_b64("s", "apikey=k&command=listzones&response=json")


@pytest.mark.parametrize(
    ("value", "java"),
    [
        ("a b", "a+b"),
        ("~", "%7E"),
        ("*._-", "*._-"),
        ("a+b", "a%2Bb"),
        ("10.1.1.0/24", "10.1.1.0%2F24"),
        ("ü", "%C3%BC"),
        ("😀", "%F0%9F%98%80"),
        ("!'()", "%21%27%28%29"),
    ],
)
def test_value_encoding_matches_java_urlencoder(value: str, java: str) -> None:
    assert java_urlencode(value) == java
    assert java_url_encoder(value) == java


def test_client_and_simulator_agree_on_tricky_values() -> None:
    values = ["", " ", "~user", "a&b=c", "x%41", "Ünïcödé ☃", "line\nbreak", "+/=", "é" * 50, "\t*"]
    for value in values:
        params = {"apiKey": "K", "command": "updateVirtualMachine", "userdata": value, "Id": "1"}
        assert sign(params, "secret") == server_signature(params, "secret"), value


def test_expires_format_is_what_java_simple_date_format_parses() -> None:
    from cloudstack_simulator import parse_expires

    text = expires_at(60, now=1_800_000_000)
    assert text == "2027-01-15T08:01:00+0000"
    assert parse_expires(text).timestamp() == 1_800_000_060


def test_tilde_signed_the_java_way_passes_but_the_cs_way_is_rejected() -> None:
    """The known ``cs`` difference: it leaves ``~`` unencoded, the Java server encodes it as %7E."""
    sim = CloudStackSimulator(api_key="K", secret_key="S")
    params = {"apiKey": "K", "command": "listVirtualMachines", "name": "home~dir", "response": "json"}
    java_way = "apikey=k&command=listvirtualmachines&name=home%7edir&response=json"
    cs_way = "apikey=k&command=listvirtualmachines&name=home~dir&response=json"
    assert sim.verify({**params, "signature": hmac_b64("S", java_way)}) is None
    assert sim.verify({**params, "signature": hmac_b64("S", cs_way)}) == "signature mismatch"


def test_cs_library_passes_the_simulator_signature_check(sim: CloudStackSimulator) -> None:
    """``cs`` (PyPI) is someone else's signer: the simulator must accept it (values without '~')."""
    cs = pytest.importorskip("cs")
    api = cs.CloudStack(endpoint=sim.url, key=sim.api_key, secret=sim.secret_key)
    zones = api.listZones()["zone"]
    assert [z["name"] for z in zones] == ["zone1"]
    templates = api.listTemplates(templatefilter="community", keyword="demo front")
    assert templates == {} or all("demo" in t["name"] for t in templates["template"])
    tagged = api.listVirtualMachines(**{"tags[0].key": "pragma-cluster", "tags[0].value": "vc 1/+*"})
    assert tagged == {}
    assert sim.rejected == []
    post = cs.CloudStack(endpoint=sim.url, key=sim.api_key, secret=sim.secret_key, method="post")
    assert post.listZones()["count"] == 1
    assert sim.rejected == []


def test_cs_library_value_with_tilde_is_rejected_by_the_simulator(sim: CloudStackSimulator) -> None:
    cs = pytest.importorskip("cs")
    api = cs.CloudStack(endpoint=sim.url, key=sim.api_key, secret=sim.secret_key)
    with pytest.raises(cs.CloudStackApiException):
        api.listVirtualMachines(name="~alice")
    assert sim.rejected == [("listVirtualMachines", "signature mismatch")]


def test_simulator_rejects_a_wrong_secret(sim: CloudStackSimulator) -> None:
    params = signed_params("listZones", {}, api_key=sim.api_key, secret_key="not-the-secret")
    assert sim.verify(params) == "signature mismatch"
    assert sim.verify(signed_params("listZones", {}, api_key=sim.api_key, secret_key=sim.secret_key)) is None
