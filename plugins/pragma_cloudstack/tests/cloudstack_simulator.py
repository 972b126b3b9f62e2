"""A CloudStack management server simulator, served over real HTTP on loopback.

It answers the API commands the pragma driver uses with the response shapes
of CloudStack 4.x (``<command>response`` wrappers lower-cased, async job ids,
``queryasyncjobresultresponse`` with ``jobstatus`` 0/1/2, ``jobresultcode``,
``jobresult``; errors with ``errorcode``/``errortext`` and HTTP 431/530/...).

Every request's signature is verified with an implementation written here
from the Java server's behaviour (``ApiServer.verifyRequest``), independently
of the client's: parameter names sorted with Java ``String.compareTo``,
values through a re-implementation of ``java.net.URLEncoder.encode`` (it
encodes ``~``, keeps ``*``), ``+`` turned into ``%20``, the whole string
lower-cased, HMAC-SHA1, base64. ``signatureVersion=3`` requests must carry an
``expires`` in the future.

State: zones, network offerings, networks (with egress rules), service
offerings, templates, VMs (Stopped/Starting/Running/Stopping/Destroyed/
Expunging) with NICs (IP, MAC), tags, userdata, async jobs, domains and
accounts (each with its API key and a CPU limit). Faults can be injected per
command: a failed job, a slow job, an HTTP 5xx, a dropped connection, an
expired signature, a list that ignores its account filter, endless pages.

Accounts are modelled as CloudStack scopes them (``buildACLSearchParameters``,
``searchForAccountsInternal``): every request acts as the account its API key
belongs to. VMs and networks carry ``account``, ``domainid`` and ``domain``
(a shared network carries no ``account``: it is the domain's). A list shows
the caller's own resources; with ``listall=true`` an admin sees every one it
may reach (a root admin: all; a domain admin: its domain and the ones below);
``account`` with ``domainid`` restricts it to that account (an error when the
caller may not reach it). ``listAccounts`` without ``listall``, ``domainid``,
``id`` or ``name`` gives the caller's own account. A user may act only on its
own resources; an admin on every one it may reach (so a destroy with an admin
key *does* remove another tenant's VM).
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import hashlib
import hmac
import ipaddress
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

API_PATH = "/client/api"
#: Seconds between two bytes of a ``drip`` answer.
DRIP = 0.02
GET_USERDATA_LIMIT = 4096
POST_USERDATA_LIMIT = 32768
VM_NAME = re.compile(r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")

# CloudStack's error codes (ApiErrorCode).
UNAUTHORIZED = 401
MALFORMED_PARAMETER_ERROR = 430
PARAM_ERROR = 431
UNSUPPORTED_ACTION_ERROR = 432
INTERNAL_ERROR = 530
ACCOUNT_ERROR = 531
INSUFFICIENT_CAPACITY_ERROR = 533
RESOURCE_ALLOCATION_ERROR = 535
# Account types (Account.Type): a user, a root admin, a domain admin.
USER, ROOT_ADMIN, DOMAIN_ADMIN = 0, 1, 2


# --------------------------------------------------------------------------- the Java side


def java_url_encoder(value: str) -> str:
    """``java.net.URLEncoder.encode(value, "UTF-8")``, character by character.

    Unchanged: ``a-z A-Z 0-9 . - * _``; a space becomes ``+``; every other
    character becomes the ``%XX`` of each of its UTF-8 bytes, upper-case hex.
    """
    out = []
    for char in value:
        if ("a" <= char <= "z") or ("A" <= char <= "Z") or ("0" <= char <= "9") or char in ".-*_":
            out.append(char)
        elif char == " ":
            out.append("+")
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def _java_sort_key(name: str) -> list[int]:
    """Java ``String.compareTo`` order: by UTF-16 code unit."""
    units = name.encode("utf-16-be")
    return [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]


def server_string_to_sign(params: dict[str, str]) -> str:
    """What ``ApiServer.verifyRequest`` signs: the sorted, encoded, lower-cased parameters."""
    pairs = []
    for name in sorted(params, key=_java_sort_key):
        if name.lower() == "signature":
            continue
        pairs.append(name + "=" + java_url_encoder(params[name]).replace("+", "%20"))
    return "&".join(pairs).lower()


def server_signature(params: dict[str, str], secret: str) -> str:
    """``Base64.encodeBase64String(HmacSHA1(secret, unsignedRequest))``."""
    mac = hmac.new(secret.encode("utf-8"), server_string_to_sign(params).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def echo_of(params: dict[str, str]) -> str:
    """What a careless server repeats of a request: its key and signature raw, URL-encoded (once
    and twice) and JSON-quoted, and the whole query re-encoded and as JSON (one ASCII line)."""
    api_key = next((v for k, v in params.items() if k.lower() == "apikey"), "")
    forms = []
    for value in (api_key, params.get("signature", "")):
        once = quote(value, safe="")
        forms += [value, once, quote_plus(value), once.lower(), quote(once, safe=""), json.dumps(value)]
    forms += [urlencode(params), json.dumps(params), quote(urlencode(params), safe="")]
    return "unable to verify the request " + " ".join(forms)


def parse_expires(text: str) -> datetime:
    """``SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ssZ").parse``: e.g. ``2026-11-26T10:00:00+0000``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- state


class ApiError(Exception):
    """An error answer: HTTP status and CloudStack errorcode are the same number."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _Fault:
    def __init__(self, kind: str, count: int, **options: Any) -> None:
        self.kind = kind
        self.count = count
        self.options = options


class Job:
    """An async job: its effect runs when it is due (``due`` is a monotonic time)."""

    def __init__(self, cmd: str, due: float, effect: Callable[[], dict], accountid: str = "") -> None:
        self.id = str(uuid.uuid4())
        self.accountid = accountid
        self.cmd = cmd
        self.due = due
        self.effect = effect
        self.status = 0
        self.resultcode = 0
        self.result: dict | None = None
        self.created = _now_text()


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


class CloudStackSimulator:
    """State and behaviour of a small CloudStack cloud; ``api_key`` is account ``pragma``'s, in domain ROOT.

    ``job_latency`` is how long an async job stays pending (seconds);
    ``default_page_size`` is what a list returns without ``pagesize``
    (CloudStack's ``default.page.size``); ``accounttype`` is the ``pragma``
    account's (:data:`USER`, :data:`ROOT_ADMIN`, :data:`DOMAIN_ADMIN`);
    ``cpu_limit`` is every account's CPU limit. :meth:`add_account` adds
    other tenants, each with its own keys.
    """

    JOB_CLASSES: ClassVar[dict[str, str]] = {
        "deployVirtualMachine": "org.apache.cloudstack.api.command.user.vm.DeployVMCmd",
        "startVirtualMachine": "org.apache.cloudstack.api.command.user.vm.StartVMCmd",
        "stopVirtualMachine": "org.apache.cloudstack.api.command.user.vm.StopVMCmd",
        "destroyVirtualMachine": "org.apache.cloudstack.api.command.user.vm.DestroyVMCmd",
        "deleteNetwork": "org.apache.cloudstack.api.command.user.network.DeleteNetworkCmd",
        "createEgressFirewallRule": "org.apache.cloudstack.api.command.user.firewall.CreateEgressFirewallRuleCmd",
        "createTags": "org.apache.cloudstack.api.command.user.tag.CreateTagsCmd",
    }

    def __init__(
        self,
        *,
        api_key: str = "sim-api-key",
        secret_key: str = "sim-secret-key/+=~",
        job_latency: float = 0.0,
        default_page_size: int = 500,
        cpu_limit: int | None = None,
        allow_user_expunge: bool = True,
        accounttype: int = USER,
    ) -> None:
        self.api_key = api_key
        self.secret_key = secret_key
        self.job_latency = job_latency
        self.default_page_size = default_page_size
        self.cpu_limit = cpu_limit
        self.allow_user_expunge = allow_user_expunge
        self.lock = threading.RLock()
        self.zones: dict[str, dict] = {}
        self.network_offerings: dict[str, dict] = {}
        self.service_offerings: dict[str, dict] = {}
        self.templates: dict[str, dict] = {}
        self.networks: dict[str, dict] = {}
        self.vms: dict[str, dict] = {}
        self.jobs: dict[str, Job] = {}
        self.egress_rules: dict[str, dict] = {}
        self.tags: list[dict] = []
        self.userdata: dict[str, str] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.rejected: list[tuple[str, str]] = []
        self.faults: dict[str, list[_Fault]] = {}
        self._macs = itertools.count(1)
        self._vlans = itertools.count(1000)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.domains: dict[str, dict] = {}
        self.accounts: dict[str, dict] = {}
        #: API key -> (secret key, account id).
        self.keys: dict[str, tuple[str, str]] = {}
        #: The account of the request being handled (set under ``lock``).
        self.caller: dict = {}
        self.root = self.add_domain("ROOT")
        self.account = self.add_account("pragma", accounttype=accounttype, api_key=api_key, secret_key=secret_key)

    # ------------------------------------------------------------------ setup helpers

    def add_domain(self, name: str, parent: dict | None = None) -> dict:
        """A domain (``ROOT`` when it has no parent), below ``parent``."""
        domain = {
            "id": str(uuid.uuid4()),
            "name": name,
            "path": name if parent is None else f"{parent['path']}/{name}",
            "parentdomainid": None if parent is None else parent["id"],
        }
        self.domains[domain["id"]] = domain
        return domain

    def add_account(
        self, name: str, *, domain: dict | None = None, accounttype: int = USER, api_key: str | None = None, secret_key: str | None = None
    ) -> dict:
        """An account in ``domain`` (default ROOT) with its API key and secret key (``_apikey``, ``_secretkey``)."""
        home = domain or self.root
        account = {
            "id": str(uuid.uuid4()),
            "name": name,
            "accounttype": accounttype,
            "domainid": home["id"],
            "domain": home["name"],
            "state": "enabled",
            "_apikey": api_key or f"key-{uuid.uuid4().hex}",
            "_secretkey": secret_key or f"secret-{uuid.uuid4().hex}",
        }
        self.accounts[account["id"]] = account
        self.keys[account["_apikey"]] = (account["_secretkey"], account["id"])
        return account

    def _in_domain(self, domainid: str | None, top: str, *, recursive: bool = True) -> bool:
        """Whether domain ``domainid`` is ``top`` (or, ``recursive``, below it)."""
        domain, above = self.domains.get(domainid or ""), self.domains.get(top)
        if domain is None or above is None:
            return False
        return domain["id"] == above["id"] or (recursive and domain["path"].startswith(above["path"] + "/"))

    def _reaches(self, caller: dict, accountid: str | None, domainid: str | None) -> bool:
        """Whether ``caller`` may see and act on what account ``accountid`` of domain ``domainid`` owns."""
        if caller["accounttype"] == ROOT_ADMIN:
            return True
        if caller["accounttype"] == DOMAIN_ADMIN:
            return self._in_domain(domainid, caller["domainid"])
        return accountid == caller["id"]

    def _may_act_on(self, obj: dict) -> None:
        """Raise the permission error CloudStack gives when the caller may not act on ``obj``."""
        caller = self.caller
        if obj.get("_accountid") is None and caller["accounttype"] != USER:
            return  # a shared network: an admin's
        if obj.get("_accountid") is None or not self._reaches(caller, obj["_accountid"], obj.get("domainid")):
            raise ApiError(ACCOUNT_ERROR, f"Account {caller['name']} does not have permission to operate within domain id={obj.get('domainid')}")

    def _owner_for(self, p: dict[str, str]) -> dict:
        """The account a new VM or network is for: the caller's, or ``account``/``domainid`` when an admin gives them."""
        return self._named_account(p) if _param(p, "account") is not None else self.caller

    def _named_account(self, p: dict[str, str]) -> dict:
        """The account ``account`` with ``domainid`` name, checked to be within the caller's reach."""
        name, domainid = _param(p, "account"), _param(p, "domainid")
        account = next((a for a in self.accounts.values() if a["name"] == name and a["domainid"] == domainid), None)
        if account is None:
            raise ApiError(PARAM_ERROR, f"Unable to find account {name} in domain id={domainid}")
        if not self._reaches(self.caller, account["id"], account["domainid"]):
            raise ApiError(ACCOUNT_ERROR, f"Account {self.caller['name']} does not have permission to access account {name}")
        return account

    def _owned_by(self, account: dict) -> dict:
        """The fields a VM or network of ``account`` carries."""
        return {"account": account["name"], "domainid": account["domainid"], "domain": account["domain"], "_accountid": account["id"]}

    def _visible(self, p: dict[str, str], *, unscoped: bool = False) -> Callable[[dict], bool]:
        """Which VMs and networks a list shows the caller (shared networks: always)."""
        caller = self.caller

        def shared(obj: dict) -> bool:
            return obj.get("_accountid") is None

        if unscoped:  # a server ignoring account/domainid: everything, as a root admin's listall
            return lambda obj: True
        if _param(p, "account") is not None:
            account = self._named_account(p)
            return lambda obj: shared(obj) or obj["_accountid"] == account["id"]
        listall = (_param(p, "listall") or "").lower() == "true"
        domainid = _param(p, "domainid")
        if caller["accounttype"] != USER and (listall or domainid is not None):
            top = domainid or caller["domainid"]
            if not self._reaches(caller, None, top):
                raise ApiError(ACCOUNT_ERROR, f"Account {caller['name']} does not have permission to access domain id={top}")
            recursive = listall or (_param(p, "isrecursive") or "").lower() == "true"
            return lambda obj: shared(obj) or self._in_domain(obj.get("domainid"), top, recursive=recursive)
        return lambda obj: shared(obj) or obj["_accountid"] == caller["id"]

    def add_zone(self, name: str, **extra: Any) -> dict:
        zone = {
            "id": str(uuid.uuid4()),
            "name": name,
            "networktype": "Advanced",
            "allocationstate": "Enabled",
            "securitygroupsenabled": False,
            "dns1": "8.8.8.8",
            "dns2": "8.8.4.4",
            "internaldns1": "10.0.0.2",
            "guestcidraddress": "10.1.1.0/24",
            "localstorageenabled": False,
            "tags": [],
        }
        zone.update(extra)
        self.zones[zone["id"]] = zone
        return zone

    def add_network_offering(self, name: str, *, services: tuple[str, ...] = ("SourceNat", "Dhcp", "Dns", "Firewall", "StaticNat", "PortForwarding"), state: str = "Enabled", forvpc: bool = False, guestiptype: str = "Isolated", egressdefaultpolicy: bool = False) -> dict:
        offering = {
            "id": str(uuid.uuid4()),
            "name": name,
            "displaytext": name,
            "guestiptype": guestiptype,
            "traffictype": "Guest",
            "state": state,
            "forvpc": forvpc,
            "isdefault": False,
            "specifyvlan": False,
            "specifyipranges": False,
            "egressdefaultpolicy": egressdefaultpolicy,
            "service": [{"name": s, "provider": [{"name": "VirtualRouter"}]} for s in services],
        }
        self.network_offerings[offering["id"]] = offering
        return offering

    def add_service_offering(self, name: str, cpus: int, memory_mib: int) -> dict:
        offering = {
            "id": str(uuid.uuid4()),
            "name": name,
            "displaytext": f"{cpus} vCPU, {memory_mib} MiB",
            "cpunumber": cpus,
            "cpuspeed": 1000,
            "memory": memory_mib,
            "storagetype": "shared",
            "offerha": False,
            "iscustomized": False,
            "created": _now_text(),
        }
        self.service_offerings[offering["id"]] = offering
        return offering

    def add_template(self, name: str, zone: dict, *, ready: bool = True, filters: tuple[str, ...] = ("executable", "self", "selfexecutable", "community", "featured", "all")) -> dict:
        template = {
            "id": str(uuid.uuid4()),
            "name": name,
            "displaytext": name,
            "isready": ready,
            "ispublic": True,
            "isfeatured": False,
            "zoneid": zone["id"],
            "zonename": zone["name"],
            "ostypename": "Other Linux (64-bit)",
            "format": "QCOW2",
            "hypervisor": "KVM",
            "templatetype": "USER",
            "status": "Download Complete" if ready else "Installing",
            "created": _now_text(),
            "_filters": filters,
        }
        self.templates[template["id"]] = template
        return template

    def add_shared_network(self, name: str, zone: dict, cidr: str, *, domain: str = "example.org") -> dict:
        """A shared network giving public addresses (what ``public_network`` names)."""
        net = ipaddress.IPv4Network(cidr)
        network = self._network_dict(name, zone, net, type_="Shared", offering=None, domain=domain)
        network["state"] = "Setup"
        self.networks[network["id"]] = network
        return network

    @classmethod
    def standard(cls, **options: Any) -> CloudStackSimulator:
        """A cloud with one zone, offerings, templates ``fe-image``/``compute-image`` and a ``public`` network."""
        sim = cls(**options)
        zone = sim.add_zone("zone1")
        sim.add_network_offering("DefaultIsolatedNetworkOfferingForVpcNetworks", forvpc=True)
        sim.add_network_offering("DefaultIsolatedNetworkOfferingWithSourceNatService")
        sim.add_network_offering("IsolatedWithSourceNatAndEgressOpen", egressdefaultpolicy=True)
        sim.add_network_offering("DisabledOffering", state="Disabled")
        sim.add_service_offering("Small Instance", 1, 512)
        sim.add_service_offering("Medium Instance", 2, 2048)
        sim.add_service_offering("Large Instance", 4, 4096)
        sim.add_template("fe-image", zone)
        sim.add_template("compute-image", zone)
        sim.add_template("other-image", zone)
        sim.add_shared_network("public", zone, "203.0.113.0/24")
        return sim

    # ------------------------------------------------------------------ faults

    def inject(self, command: str, kind: str, *, count: int = 1, **options: Any) -> None:
        """Make the next ``count`` calls of ``command`` misbehave.

        ``kind``: ``fail_job`` (async job ends with jobstatus 2, option
        ``errortext``), ``slow_job`` (option ``delay`` seconds), ``http_error``
        (option ``status``, default 503, an HTML body as a proxy sends),
        ``drop`` (the connection is closed without an answer),
        ``drop_after`` (the command takes effect, then the answer is lost),
        ``late`` (the answer is lost at once and the command takes effect only
        ``delay`` seconds later, default 0.3: a server still at work when the
        client gave up), ``expire``
        (the server's clock runs ahead, so the signature has expired), ``drip``
        (the answer comes one byte every :data:`DRIP` seconds), ``huge`` (the
        answer announces a length of 10**12 bytes), ``echo``
        (a careless server: an error whose ``errortext`` -- or, with option
        ``reason=True``, the HTTP reason phrase of a non-JSON answer -- repeats
        the request's ``apiKey``, ``signature`` and whole query, raw,
        URL-encoded and JSON-quoted, see :func:`echo_of`; option ``status``,
        default 431), ``unscoped`` (a list that ignores ``account``,
        ``domainid`` and ``listall``: it shows every account's VMs or
        networks), ``endless`` (from now on, every page of the list is full,
        with a ``count`` always one page ahead: see :meth:`_endless_page`).
        """
        kinds = ("fail_job", "slow_job", "http_error", "drop", "drop_after", "late", "expire", "drip", "huge", "echo",
                 "unscoped", "endless")
        assert kind in kinds, kind
        with self.lock:
            self.faults.setdefault(command, []).append(_Fault(kind, count, **options))

    def _take_fault(self, command: str, kinds: tuple[str, ...]) -> _Fault | None:
        with self.lock:
            for fault in self.faults.get(command, []):
                if fault.kind in kinds and fault.count > 0:
                    if fault.options.get("skip", 0) > 0:
                        fault.options["skip"] -= 1
                        continue
                    if fault.kind != "endless":  # an endless list never ends
                        fault.count -= 1
                    return fault
        return None

    # ------------------------------------------------------------------ server

    def start(self) -> str:
        """Serve on 127.0.0.1 on a free port; the API URL."""
        simulator = self

        class Handler(_Handler):
            sim = simulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{API_PATH}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CloudStackSimulator:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ request handling

    def handle(self, method: str, params: dict[str, str]) -> tuple[int, dict | None, str | None]:
        """One API request: (HTTP status, JSON body or None, fault kind or None)."""
        command = params.get("command", "")
        key = command.lower() + "response"
        with self.lock:
            self.requests.append((method, command, dict(params)))
        fault = self._take_fault(command, ("drop", "http_error", "drip", "huge", "echo"))
        if fault is not None and fault.kind == "echo":
            status = fault.options.get("status", PARAM_ERROR)
            if fault.options.get("reason"):
                return status, None, "echo_reason"
            return status, {key: {"uuidList": [], "errorcode": status, "errortext": echo_of(params)}}, None
        if fault is not None:
            return fault.options.get("status", 503), None, fault.kind
        skew = 0.0
        if self._take_fault(command, ("expire",)) is not None:
            skew = 3600.0
        problem = self.verify(params, skew=skew)
        if problem:
            with self.lock:
                self.rejected.append((command, problem))
            return UNAUTHORIZED, {key: {"uuidList": [], "errorcode": UNAUTHORIZED, "errortext": "unable to verify user credentials and/or request signature"}}, None
        if params.get("response") != "json":
            return PARAM_ERROR, {key: {"uuidList": [], "errorcode": PARAM_ERROR, "errortext": "only response=json is simulated"}}, None
        handler = getattr(self, "cmd_" + command, None)
        if handler is None:
            text = f"The given command:{command} does not exist or it is not available for user"
            return UNSUPPORTED_ACTION_ERROR, {"errorresponse": {"uuidList": [], "errorcode": UNSUPPORTED_ACTION_ERROR, "errortext": text}}, None
        api_key = next(v for k, v in params.items() if k.lower() == "apikey")
        endless = self._take_fault(command, ("endless",))
        if endless is not None:
            return 200, {key: self._endless_page(command, params, endless)}, None
        late = self._take_fault(command, ("late",))
        if late is not None:
            def take_effect() -> None:
                with self.lock, contextlib.suppress(ApiError):
                    self.caller = self.accounts[self.keys[api_key][1]]
                    handler(params, method)

            timer = threading.Timer(late.options.get("delay", 0.3), take_effect)
            timer.daemon = True
            timer.start()
            return 200, None, "drop"
        try:
            with self.lock:
                self.caller = self.accounts[self.keys[api_key][1]]
                self._tick()
                answer = handler(params, method)
        except ApiError as exc:
            return exc.code, {key: {"uuidList": [], "errorcode": exc.code, "cserrorcode": 9999, "errortext": exc.text}}, None
        if self._take_fault(command, ("drop_after",)) is not None:
            return 200, None, "drop"
        return 200, {key: answer}, None

    def verify(self, params: dict[str, str], *, skew: float = 0.0) -> str | None:
        """Why the request's signature is not valid, or ``None`` when it is."""
        signature = params.get("signature")
        api_key = next((v for k, v in params.items() if k.lower() == "apikey"), None)
        if not signature or not api_key:
            return "missing signature or apiKey"
        if api_key not in self.keys:
            return "unknown apiKey"
        secret = self.keys[api_key][0]
        version = next((v for k, v in params.items() if k.lower() == "signatureversion"), None)
        if version == "3":
            expires = next((v for k, v in params.items() if k.lower() == "expires"), None)
            if expires is None:
                return "signatureVersion 3 without expires"
            try:
                moment = parse_expires(expires)
            except ValueError:
                return f"bad expires format {expires!r}"
            if moment.timestamp() < time.time() + skew:
                return "request expired"
        expected = server_signature(params, secret)
        if not hmac.compare_digest(signature, expected):
            return "signature mismatch"
        return None

    # ------------------------------------------------------------------ jobs

    def _tick(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if job.status == 0 and job.due <= now:
                self._finish(job)

    def _finish(self, job: Job) -> None:
        try:
            job.result = job.effect()
            job.status = 1
        except ApiError as exc:
            job.status, job.resultcode = 2, exc.code
            job.result = {"errorcode": exc.code, "errortext": exc.text}

    def _job(self, command: str, effect: Callable[[], dict], *, on_fail: Callable[[], None] | None = None) -> Job:
        latency = self.job_latency
        slow = self._take_fault(command, ("slow_job",))
        if slow is not None:
            latency = slow.options.get("delay", 1.0)
        failed = self._take_fault(command, ("fail_job",))
        if failed is not None:
            text = failed.options.get("errortext", f"Job failed: {command}")

            def effect() -> dict:  # the injected failure replaces the job's work
                if on_fail is not None:
                    on_fail()
                raise ApiError(INTERNAL_ERROR, text)

        job = Job(self.JOB_CLASSES.get(command, command), time.monotonic() + latency, effect, self.caller.get("id", ""))
        self.jobs[job.id] = job
        return job

    def cmd_queryAsyncJobResult(self, p: dict[str, str], method: str) -> dict:
        job = self.jobs.get(_require(p, "jobid"))
        if job is None:
            raise ApiError(PARAM_ERROR, f"Unable to find job by id {p['jobid']}")
        answer: dict[str, Any] = {
            "accountid": job.accountid,
            "userid": "user-1",
            "cmd": job.cmd,
            "jobstatus": job.status,
            "jobprocstatus": 0,
            "jobresultcode": job.resultcode,
            "jobinstancetype": "None",
            "created": job.created,
            "jobid": job.id,
        }
        if job.status != 0:
            answer["jobresulttype"] = "object"
            answer["jobresult"] = job.result
            answer["completed"] = _now_text()
        return answer

    # ------------------------------------------------------------------ lists

    def _endless_page(self, command: str, p: dict[str, str], fault: _Fault) -> dict:
        """A full page of made-up items, and a ``count`` one page beyond it: the list never ends."""
        size = int(_param(p, "pagesize") or self.default_page_size)
        page = int(_param(p, "page") or 1)
        item = fault.options.get("item") or command[4:].lower().removesuffix("s")
        return {"count": (page + 1) * size, item: [{"id": f"{page}-{i}", "name": f"item-{page}-{i}"} for i in range(size)]}

    def _page(self, p: dict[str, str], items: list[dict], key: str) -> dict:
        if "page" in p and "pagesize" not in p:
            raise ApiError(PARAM_ERROR, '"pagesize" parameter is required when "page" is specified')
        try:
            size = int(p.get("pagesize", self.default_page_size))
            page = int(p.get("page", 1))
        except ValueError:
            raise ApiError(MALFORMED_PARAMETER_ERROR, "Unable to decode parameter page or pagesize") from None
        if size < 1 or page < 1:
            raise ApiError(PARAM_ERROR, "page and pagesize must be positive")
        total = len(items)
        chunk = items[(page - 1) * size : page * size]
        if not total:
            return {}
        return {"count": total, key: [_public(i) for i in chunk]}

    def cmd_listZones(self, p: dict[str, str], method: str) -> dict:
        zones = [z for z in self.zones.values() if _matches(z, p, ("id", "name"))]
        return self._page(p, zones, "zone")

    def cmd_listNetworkOfferings(self, p: dict[str, str], method: str) -> dict:
        result = []
        for offering in self.network_offerings.values():
            if not _matches(offering, p, ("id", "name", "guestiptype")):
                continue
            if "state" in p and offering["state"].lower() != p["state"].lower():
                continue
            if "forvpc" in p and offering["forvpc"] != (p["forvpc"].lower() == "true"):
                continue
            wanted = _param(p, "supportedservices")
            if wanted:
                have = {s["name"].lower() for s in offering["service"]}
                if not all(w.strip().lower() in have for w in wanted.split(",")):
                    continue
            result.append(offering)
        return self._page(p, result, "networkoffering")

    def cmd_listServiceOfferings(self, p: dict[str, str], method: str) -> dict:
        result = [o for o in self.service_offerings.values() if _matches(o, p, ("id", "name"))]
        return self._page(p, result, "serviceoffering")

    def cmd_listTemplates(self, p: dict[str, str], method: str) -> dict:
        tfilter = _require(p, "templatefilter")
        if tfilter not in ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all"):
            raise ApiError(PARAM_ERROR, f"Unable to execute API command listtemplates due to invalid value. Invalid parameter templatefilter value={tfilter}")
        result = [
            t for t in self.templates.values()
            if tfilter in t["_filters"] and _matches(t, p, ("id", "name", "zoneid")) and _keyword(t, p)
        ]
        return self._page(p, result, "template")

    def cmd_listNetworks(self, p: dict[str, str], method: str) -> dict:
        visible = self._visible(p, unscoped=self._take_fault("listNetworks", ("unscoped",)) is not None)
        result = [
            n for n in self.networks.values()
            if visible(n) and _matches(n, p, ("id", "zoneid")) and _keyword(n, p) and self._tagged(n, p)
        ]
        return self._page(p, result, "network")

    def cmd_listVirtualMachines(self, p: dict[str, str], method: str) -> dict:
        visible = self._visible(p, unscoped=self._take_fault("listVirtualMachines", ("unscoped",)) is not None)
        result = []
        for vm in self.vms.values():
            if not visible(vm) or not _matches(vm, p, ("id", "state")):
                continue
            # CloudStack matches "name" as a substring (SQL LIKE %name%).
            if "name" in p and p["name"] not in vm["name"]:
                continue
            if "networkid" in p and not any(n["networkid"] == p["networkid"] for n in vm["nic"]):
                continue
            if not (_keyword(vm, p) and self._tagged(vm, p)):
                continue
            result.append(vm)
        return self._page(p, result, "virtualmachine")

    def cmd_listAccounts(self, p: dict[str, str], method: str) -> dict:
        """As ``searchForAccountsInternal``: the caller's own account unless an admin asks for more."""
        caller = self.caller
        listall = (_param(p, "listall") or "").lower() == "true"
        domainid, wanted_id, name = _param(p, "domainid"), _param(p, "id"), _param(p, "name")
        reachable = [a for a in self.accounts.values() if self._reaches(caller, a["id"], a["domainid"])]
        if wanted_id is not None:
            result = [a for a in reachable if a["id"] == wanted_id]
        elif caller["accounttype"] != USER and domainid is not None:
            recursive = listall or (_param(p, "isrecursive") or "").lower() == "true"
            result = [a for a in reachable if self._in_domain(a["domainid"], domainid, recursive=recursive)]
        elif caller["accounttype"] != USER and listall:
            result = [a for a in reachable if self._in_domain(a["domainid"], caller["domainid"])]
        elif caller["accounttype"] != USER and name is not None:
            result = [a for a in reachable if a["domainid"] == caller["domainid"]]
        else:
            result = [caller]
        if name is not None:
            result = [a for a in result if a["name"] == name]
        return self._page(p, [self._account_view(a) for a in result], "account")

    def _account_view(self, account: dict) -> dict:
        """An account as ``listAccounts`` shows it, with its CPU counts."""
        used = self._cpus_used(account)
        limit = "Unlimited" if self.cpu_limit is None else str(self.cpu_limit)
        available = "Unlimited" if self.cpu_limit is None else str(max(self.cpu_limit - used, 0))
        mine = [vm for vm in self.vms.values() if vm["_accountid"] == account["id"] and vm["state"] != "Expunging"]
        return {
            **account, "cpulimit": limit, "cputotal": used, "cpuavailable": available,
            "vmlimit": "Unlimited", "vmtotal": len(mine), "vmavailable": "Unlimited",
        }

    def _cpus_used(self, account: dict) -> int:
        return sum(
            vm["cpunumber"] for vm in self.vms.values()
            if vm["_accountid"] == account["id"] and vm["state"] not in ("Destroyed", "Expunging")
        )

    def _tagged(self, obj: dict, p: dict[str, str]) -> bool:
        """``tags[i].key`` / ``tags[i].value`` filters: every given pair must be on the object (exact)."""
        wanted: dict[str, dict[str, str]] = {}
        for name, value in p.items():
            m = re.fullmatch(r"tags\[(\d+)\]\.(key|value)", name, re.IGNORECASE)
            if m:
                wanted.setdefault(m.group(1), {})[m.group(2).lower()] = value
        for pair in wanted.values():
            if not any(
                t["key"] == pair.get("key") and ("value" not in pair or t["value"] == pair["value"])
                for t in obj.get("tags", [])
            ):
                return False
        return True

    # ------------------------------------------------------------------ networks

    def _network_dict(self, name: str, zone: dict, net: ipaddress.IPv4Network, *, type_: str, offering: dict | None, domain: str) -> dict:
        return {
            "id": str(uuid.uuid4()),
            "name": name,
            "displaytext": name,
            "zoneid": zone["id"],
            "zonename": zone["name"],
            "type": type_,
            "traffictype": "Guest",
            "networkofferingid": offering["id"] if offering else "shared-offering",
            "networkofferingname": offering["name"] if offering else "DefaultSharedNetworkOffering",
            "cidr": str(net),
            "gateway": str(net.network_address + 1),
            "netmask": str(net.netmask),
            "networkdomain": domain,
            "state": "Allocated",
            "broadcastdomaintype": "Vlan",
            "acltype": "Domain",
            "domainid": self.root["id"],
            "domain": self.root["name"],
            "_accountid": None,
            "tags": [],
            "_used": {str(net.network_address + 1)},
        }

    def cmd_createNetwork(self, p: dict[str, str], method: str) -> dict:
        for name in ("name", "displaytext", "networkofferingid", "zoneid"):
            _require(p, name)
        zone = self.zones.get(p["zoneid"])
        if zone is None:
            raise ApiError(PARAM_ERROR, f"Unable to find zone by id {p['zoneid']}")
        offering = self.network_offerings.get(p["networkofferingid"])
        if offering is None:
            raise ApiError(PARAM_ERROR, "Unable to find network offering by specified id")
        if offering["state"] != "Enabled":
            raise ApiError(PARAM_ERROR, f"Network offering {offering['name']} is not in Enabled state")
        if offering["forvpc"]:
            raise ApiError(PARAM_ERROR, "Network offering can be used for VPC networks only")
        if "gateway" in p and "netmask" in p:
            net = ipaddress.IPv4Network(f"{p['gateway']}/{p['netmask']}", strict=False)
        else:
            net = ipaddress.IPv4Network(zone["guestcidraddress"])
        owner = self._owner_for(p)
        network = self._network_dict(p["name"], zone, net, type_="Isolated", offering=offering, domain="cs1cloud.internal")
        network.update(self._owned_by(owner), acltype="Account", displaytext=p["displaytext"])
        network["egressdefaultpolicy"] = offering["egressdefaultpolicy"]
        self.networks[network["id"]] = network
        return {"network": _public(network)}

    def cmd_deleteNetwork(self, p: dict[str, str], method: str) -> dict:
        network = self._get_network(_require(p, "id"))
        self._may_act_on(network)
        network_id = network["id"]

        def effect() -> dict:
            users = [vm for vm in self.vms.values() if any(n["networkid"] == network_id for n in vm["nic"])]
            if users:
                raise ApiError(INTERNAL_ERROR, f"Can't delete the network, not all user vms are expunged. Vm {users[0]['name']} is in {users[0]['state']} state")
            self.networks.pop(network_id, None)
            self.tags = [t for t in self.tags if t["resourceid"] != network_id]
            for rule_id in [r for r, rule in self.egress_rules.items() if rule["networkid"] == network_id]:
                del self.egress_rules[rule_id]
            return {"success": True}

        return {"jobid": self._job("deleteNetwork", effect).id}

    def _get_network(self, network_id: str) -> dict:
        network = self.networks.get(network_id)
        if network is None:
            raise ApiError(PARAM_ERROR, f"Unable to find network by id {network_id}")
        return network

    def cmd_createEgressFirewallRule(self, p: dict[str, str], method: str) -> dict:
        network = self._get_network(_require(p, "networkid"))
        self._may_act_on(network)
        protocol = _require(p, "protocol").lower()
        if protocol not in ("tcp", "udp", "icmp", "all"):
            raise ApiError(PARAM_ERROR, f"Invalid protocol {protocol}")
        if network["type"] != "Isolated":
            raise ApiError(PARAM_ERROR, "Egress firewall rules can be created only for isolated networks")
        rule = {
            "id": str(uuid.uuid4()),
            "networkid": network["id"],
            "protocol": protocol,
            "cidrlist": p.get("cidrlist", network["cidr"]),
            "state": "Active",
            "traffictype": "Egress",
        }
        for port in ("startport", "endport"):
            if port in p:
                rule[port] = int(p[port])

        def effect() -> dict:
            self.egress_rules[rule["id"]] = rule
            return {"firewallrule": dict(rule)}

        return {"id": rule["id"], "jobid": self._job("createEgressFirewallRule", effect).id}

    # ------------------------------------------------------------------ tags

    def cmd_createTags(self, p: dict[str, str], method: str) -> dict:
        ids = [i for i in _require(p, "resourceids").split(",") if i]
        rtype = _require(p, "resourcetype")
        pairs: dict[str, dict[str, str]] = {}
        for name, value in p.items():
            m = re.fullmatch(r"tags\[(\d+)\]\.(key|value)", name, re.IGNORECASE)
            if m:
                pairs.setdefault(m.group(1), {})[m.group(2).lower()] = value
        if not pairs:
            raise ApiError(PARAM_ERROR, "Unable to execute API command createtags due to missing parameter tags")
        store = {"UserVm": self.vms, "Network": self.networks}.get(rtype)
        if store is None:
            raise ApiError(PARAM_ERROR, f"Unsupported resource type {rtype}")
        for rid in ids:
            if rid not in store:
                raise ApiError(PARAM_ERROR, f"Unable to find resource by id {rid} and type {rtype}")
            self._may_act_on(store[rid])

        def effect() -> dict:
            for rid in ids:
                obj = store.get(rid)
                if obj is None:
                    raise ApiError(PARAM_ERROR, f"Unable to find resource by id {rid}")
                for pair in pairs.values():
                    if any(t["key"] == pair["key"] for t in obj["tags"]):
                        raise ApiError(PARAM_ERROR, f"tag {pair['key']} already exists on {rid}")
                    tag = {
                        "key": pair["key"], "value": pair.get("value", ""), "resourcetype": rtype, "resourceid": rid,
                        "account": obj.get("account"), "domainid": obj.get("domainid"), "domain": obj.get("domain"),
                    }
                    obj["tags"].append(tag)
                    self.tags.append(tag)
            return {"success": True}

        return {"jobid": self._job("createTags", effect).id}

    # ------------------------------------------------------------------ VMs

    def cmd_deployVirtualMachine(self, p: dict[str, str], method: str) -> dict:
        for name in ("serviceofferingid", "templateid", "zoneid"):
            _require(p, name)
        zone = self.zones.get(p["zoneid"])
        offering = self.service_offerings.get(p["serviceofferingid"])
        template = self.templates.get(p["templateid"])
        if zone is None:
            raise ApiError(PARAM_ERROR, f"Unable to find zone by id={p['zoneid']}")
        if offering is None:
            raise ApiError(PARAM_ERROR, f"Unable to find service offering: {p['serviceofferingid']}")
        if template is None or template["zoneid"] != zone["id"]:
            raise ApiError(PARAM_ERROR, f"Unable to use template {p['templateid']}")
        if not template["isready"]:
            raise ApiError(PARAM_ERROR, f"Template {template['name']} has not been completely downloaded to zone {zone['name']}")
        name = p.get("name") or f"VM-{uuid.uuid4()}"
        if not VM_NAME.match(name):
            raise ApiError(PARAM_ERROR, "Invalid name. Vm name can contain ASCII letters 'a' through 'z', the digits '0' through '9', and the hyphen ('-'), must be between 1 and 63 characters long, and can't start or end with \"-\" and can't start with digit")
        owner = self._owner_for(p)
        requested: list[tuple[str, str | None]] = []
        indexed: dict[int, dict[str, str]] = {}
        for key, value in p.items():
            m = re.fullmatch(r"iptonetworklist\[(\d+)\]\.(networkid|ip)", key, re.IGNORECASE)
            if m:
                indexed.setdefault(int(m.group(1)), {})[m.group(2).lower()] = value
        for index in sorted(indexed):
            requested.append((indexed[index].get("networkid", ""), indexed[index].get("ip")))
        if not requested and p.get("networkids"):
            requested = [(nid, None) for nid in p["networkids"].split(",")]
        if not requested:
            raise ApiError(PARAM_ERROR, "Can't deploy a VM in an advanced zone without a network")
        networks = [self._get_network(nid) for nid, _ in requested]
        for network in networks:
            if network["_accountid"] not in (None, owner["id"]):
                raise ApiError(ACCOUNT_ERROR, f"Account {owner['name']} does not have permission to access network {network['id']}")
            # The host name is unique within each network the VM joins (checkIfHostNameUniqueInNtwkDomain).
            taken = any(
                vm["name"] == name and vm["state"] != "Expunging" and any(n["networkid"] == network["id"] for n in vm["nic"])
                for vm in self.vms.values()
            )
            if taken:
                raise ApiError(PARAM_ERROR, f"The vm with hostName {name} already exists in the network domain: {network['networkdomain']}; network={network['name']}")
        if self.cpu_limit is not None:
            used = self._cpus_used(owner)
            if used + offering["cpunumber"] > self.cpu_limit:
                raise ApiError(RESOURCE_ALLOCATION_ERROR, f"Maximum number of resources of type 'cpu' for account name={owner['name']} in domain id={owner['domainid']} has been exceeded. Amount of Resources Used: {used}, Requested: {offering['cpunumber']}, Limit: {self.cpu_limit}")
        userdata = p.get("userdata")
        if userdata is not None:
            self._check_userdata(userdata, method)
        nics = []
        for index, (network, (_, ip)) in enumerate(zip(networks, requested)):
            nics.append(self._nic(network, ip, default=index == 0))
        vm = {
            "id": str(uuid.uuid4()),
            "name": name,
            "displayname": p.get("displayname", name),
            "instancename": f"i-2-{len(self.vms) + 3}-VM",
            **self._owned_by(owner),
            "state": "Stopped",
            "zoneid": zone["id"],
            "zonename": zone["name"],
            "templateid": template["id"],
            "templatename": template["name"],
            "serviceofferingid": offering["id"],
            "serviceofferingname": offering["name"],
            "cpunumber": offering["cpunumber"],
            "cpuspeed": offering["cpuspeed"],
            "memory": offering["memory"],
            "hypervisor": "KVM",
            "haenable": False,
            "created": _now_text(),
            "nic": nics,
            "tags": [],
        }
        self.vms[vm["id"]] = vm
        if userdata is not None:
            self.userdata[vm["id"]] = userdata
        start = p.get("startvm", "true").lower() == "true"
        if start:
            vm["state"] = "Starting"

        def effect() -> dict:
            if start:
                vm["state"] = "Running"
            return {"virtualmachine": _public(vm)}

        def on_fail() -> None:
            # A failed deployment leaves the VM in Error state, as CloudStack does.
            vm["state"] = "Error"

        return {"id": vm["id"], "jobid": self._job("deployVirtualMachine", effect, on_fail=on_fail).id}

    def _nic(self, network: dict, ip: str | None, *, default: bool) -> dict:
        net = ipaddress.IPv4Network(network["cidr"])
        if ip is not None:
            if ipaddress.IPv4Address(ip) not in net or ip in network["_used"]:
                raise ApiError(PARAM_ERROR, f"IP address {ip} is not available in network {network['name']}")
            address = ip
        else:
            address = next((str(h) for h in net.hosts() if str(h) not in network["_used"]), None)
            if address is None:
                raise ApiError(INSUFFICIENT_CAPACITY_ERROR, f"Unable to acquire Guest IP address for network {network['name']}")
        network["_used"].add(address)
        serial = next(self._macs)
        return {
            "id": str(uuid.uuid4()),
            "networkid": network["id"],
            "networkname": network["name"],
            "ipaddress": address,
            "netmask": network["netmask"],
            "gateway": network["gateway"],
            "macaddress": "02:00:" + ":".join(f"{b:02x}" for b in serial.to_bytes(4, "big")),
            "isdefault": default,
            "type": network["type"],
            "traffictype": "Guest",
            "broadcasturi": f"vlan://{next(self._vlans)}",
        }

    def _check_userdata(self, userdata: str, method: str) -> None:
        limit = POST_USERDATA_LIMIT if method == "POST" else GET_USERDATA_LIMIT
        if len(userdata) > limit:
            raise ApiError(PARAM_ERROR, f"User data is too long for an http {method} request")
        try:
            base64.b64decode(userdata, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(PARAM_ERROR, "User data is not base64 encoded") from None

    def _get_vm(self, vm_id: str) -> dict:
        vm = self.vms.get(vm_id)
        if vm is None or vm["state"] == "Expunging":
            raise ApiError(PARAM_ERROR, f"Unable to find virtual machine with id {vm_id}")
        self._may_act_on(vm)
        return vm

    def cmd_updateVirtualMachine(self, p: dict[str, str], method: str) -> dict:
        vm = self._get_vm(_require(p, "id"))
        if "userdata" in p:
            self._check_userdata(p["userdata"], method)
            self.userdata[vm["id"]] = p["userdata"]
        if "displayname" in p:
            vm["displayname"] = p["displayname"]
        return {"virtualmachine": _public(vm)}

    def cmd_startVirtualMachine(self, p: dict[str, str], method: str) -> dict:
        vm = self._get_vm(_require(p, "id"))
        if vm["state"] in ("Destroyed", "Error"):
            raise ApiError(PARAM_ERROR, f"Unable to start VM {vm['name']} in state {vm['state']}")
        previous = vm["state"]
        if previous != "Running":
            vm["state"] = "Starting"

        def effect() -> dict:
            vm["state"] = "Running"
            return {"virtualmachine": _public(vm)}

        def on_fail() -> None:
            vm["state"] = "Stopped" if previous != "Running" else "Running"

        return {"id": vm["id"], "jobid": self._job("startVirtualMachine", effect, on_fail=on_fail).id}

    def cmd_stopVirtualMachine(self, p: dict[str, str], method: str) -> dict:
        vm = self._get_vm(_require(p, "id"))
        if vm["state"] in ("Destroyed", "Error"):
            raise ApiError(PARAM_ERROR, f"Unable to stop VM {vm['name']} in state {vm['state']}")
        previous = vm["state"]
        if previous != "Stopped":
            vm["state"] = "Stopping"

        def effect() -> dict:
            vm["state"] = "Stopped"
            return {"virtualmachine": _public(vm)}

        def on_fail() -> None:
            vm["state"] = previous

        return {"id": vm["id"], "jobid": self._job("stopVirtualMachine", effect, on_fail=on_fail).id}

    def cmd_destroyVirtualMachine(self, p: dict[str, str], method: str) -> dict:
        vm = self._get_vm(_require(p, "id"))
        expunge = p.get("expunge", "false").lower() == "true"
        if expunge and not self.allow_user_expunge:
            raise ApiError(ACCOUNT_ERROR, "Parameter expunge can be passed by Admin only. Or when the allow.user.expunge.recover.vm key is set.")
        if vm["state"] == "Destroyed" and not expunge:
            raise ApiError(PARAM_ERROR, f"Vm {vm['name']} is already destroyed")
        previous = vm["state"]
        vm["state"] = "Expunging" if expunge else "Stopping"

        def effect() -> dict:
            answer = {"virtualmachine": _public(dict(vm, state="Expunging" if expunge else "Destroyed"))}
            if expunge:
                self._expunge(vm)
            else:
                vm["state"] = "Destroyed"
            return answer

        def on_fail() -> None:
            vm["state"] = previous

        return {"id": vm["id"], "jobid": self._job("destroyVirtualMachine", effect, on_fail=on_fail).id}

    def _expunge(self, vm: dict) -> None:
        for nic in vm["nic"]:
            network = self.networks.get(nic["networkid"])
            if network is not None:
                network["_used"].discard(nic["ipaddress"])
        self.vms.pop(vm["id"], None)
        self.userdata.pop(vm["id"], None)
        self.tags = [t for t in self.tags if t["resourceid"] != vm["id"]]

    # ------------------------------------------------------------------ inspection for tests

    def vms_named(self, prefix: str) -> list[dict]:
        with self.lock:
            return [vm for vm in self.vms.values() if vm["name"] == prefix or vm["name"].startswith(prefix + "-")]

    def networks_named(self, name: str) -> list[dict]:
        with self.lock:
            return [n for n in self.networks.values() if n["name"] == name]

    def calls(self, command: str) -> list[tuple[str, dict[str, str]]]:
        with self.lock:
            return [(m, p) for m, c, p in self.requests if c == command]


def _require(p: dict[str, str], name: str) -> str:
    value = _param(p, name)
    if value is None or value == "":
        raise ApiError(PARAM_ERROR, f"Unable to execute API command due to missing parameter {name}")
    return value


def _param(p: dict[str, str], name: str) -> str | None:
    """A parameter by name; CloudStack's parameter names are case-insensitive."""
    if name in p:
        return p[name]
    lowered = name.lower()
    return next((v for k, v in p.items() if k.lower() == lowered), None)


def _matches(obj: dict, p: dict[str, str], names: tuple[str, ...]) -> bool:
    for name in names:
        value = _param(p, name)
        if value is not None and str(obj.get(name)) != value:
            return False
    return True


def _keyword(obj: dict, p: dict[str, str]) -> bool:
    keyword = _param(p, "keyword")
    return keyword is None or keyword.lower() in obj.get("name", "").lower()


def _public(obj: dict) -> dict:
    """A copy without the simulator's private ``_`` keys."""
    return json.loads(json.dumps({k: v for k, v in obj.items() if not k.startswith("_")}, default=str))


class _Handler(BaseHTTPRequestHandler):
    sim: CloudStackSimulator
    protocol_version = "HTTP/1.1"
    # Send headers and body in one segment: no Nagle/delayed-ACK stalls on loopback.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET", "")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        ctype = self.headers.get("Content-Type", "")
        if body and "application/x-www-form-urlencoded" not in ctype:
            self._reply(415, {"errorresponse": {"errorcode": 415, "errortext": f"unsupported content type {ctype}"}})
            return
        self._serve("POST", body)

    def _serve(self, method: str, body: str) -> None:
        url = urlsplit(self.path)
        if url.path != API_PATH:
            self._reply(404, {"errorresponse": {"errorcode": 404, "errortext": "not found"}})
            return
        # Like the servlet container: query string and form body merged, '+' decoded as space.
        params: dict[str, str] = {}
        for key, value in parse_qsl(url.query, keep_blank_values=True) + parse_qsl(body, keep_blank_values=True):
            params.setdefault(key, value)
        status, answer, fault = self.sim.handle(method, params)
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        if fault == "echo_reason":
            data = b"<html><body>rejected</body></html>"
            self.send_response(status, echo_of(params))
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if fault in ("drip", "huge"):
            self._hostile_answer(fault)
            return
        if fault == "http_error":
            data = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._reply(status, answer)

    def _hostile_answer(self, fault: str) -> None:
        """A 200 whose JSON body comes one byte at a time, or whose length is absurd."""
        data = json.dumps({"listzonesresponse": {"count": 0, "zone": []}}).encode("utf-8") + b" " * 4096
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(10**12 if fault == "huge" else len(data)))
        self.end_headers()
        try:
            for index in range(len(data)):
                if fault == "drip":
                    time.sleep(DRIP)
                self.wfile.write(data[index : index + 1])
        except OSError:  # the client gave up
            pass

    def _reply(self, status: int, answer: dict | None) -> None:
        data = json.dumps(answer or {}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
