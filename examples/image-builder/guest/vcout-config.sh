#!/bin/sh
# pragma-vcout: the guest's boot-time configurator ("dynip") for PRAGMA virtual clusters.
#
# Reads /root/vc-out.xml in vc-out format 1 or 2 (see pragma_core/vcout.py; the
# frontend gets the cluster file, each compute its own file), then:
#   * sets the hostname (and /etc/hostname),
#   * configures every interface the file lists -- address, netmask, MTU -- on the
#     NIC whose MAC address matches (never by position), brings it up,
#   * sets the default route through the node's gateway,
#   * writes /etc/hosts (frontend and computes) and /etc/resolv.conf,
#   * authorises the key in /root/.ssh/authorized_keys,
#   * reports everything on stdout (the serial console) as machine-readable lines:
#       PRAGMA-VCOUT: role=R name=N net=NET iface=DEV mac=M ip=A/P netmask=D mtu=U
#       PRAGMA-HOSTS: IP=NAME IP=NAME ...
#       PRAGMA-KEY: authorized TYPE COMMENT
#       PRAGMA-READY name=N role=R          (or PRAGMA-FAILED name=N role=R errors=K)
#       PRAGMA-ERROR: <one line>             (anything wrong)
#   and, on the frontend, `reach`:
#       PRAGMA-REACH: compute-0 10.1.255.254 ok|fail
#       PRAGMA-REACH-DONE ok=N fail=M
#
# Usage: pragma-vcout [configure|reach|parse|all]   (default: all = configure, then reach)
# Written for busybox sh/sed/awk. Environment (for tests on the host):
#   VCOUT_FILE           the vc-out file                [/root/vc-out.xml]
#   VCOUT_ROOT           prefix for files it writes     [""]  (/etc/hosts, /etc/hostname,
#                        /etc/resolv.conf, /root/.ssh/authorized_keys)
#   VCOUT_NET_DIR        where NICs are listed          [/sys/class/net] (DIR/<dev>/address)
#   VCOUT_DRYRUN=1       print "RUN: <command>" instead of running ip/hostname/ping
#   VCOUT_REACH_TIMEOUT  seconds the frontend keeps trying to reach computes [120]

VCOUT_FILE=${VCOUT_FILE:-/root/vc-out.xml}
ROOT=${VCOUT_ROOT:-}
NET_DIR=${VCOUT_NET_DIR:-/sys/class/net}
DRYRUN=${VCOUT_DRYRUN:-0}
REACH_TIMEOUT=${VCOUT_REACH_TIMEOUT:-120}

# The parser: turns the XML (one element per line after the sed split) into records
#   ROLE frontend|compute     NAME host   FQDN fqdn   GW ip
#   IFACE net ip prefix netmask mac mtu
#   HOST label ip names...    PEER name ip (frontend: the computes to reach)
#   DNS ip                    SEARCH domain            KEY text
#   ERROR message
# Every value is checked here (IP, MAC, MTU, hostname syntax), so the shell below
# never handles anything but plain tokens.
PARSER='
function unxml(s) {
    gsub(/&lt;/, "<", s); gsub(/&gt;/, ">", s); gsub(/&quot;/, "\"", s); gsub(/&apos;/, "\047", s)
    gsub(/&#10;|&#13;|&#9;/, " ", s); gsub(/&amp;/, "\\&", s)
    return s
}
function has(e, k) { return ((e SUBSEP k) in A) }
function get(e, k) { return has(e, k) ? A[e, k] : "" }
function child(e, tag,    i) {
    for (i = 1; i <= NCH[e]; i++) if (T[CH[e, i]] == tag) return CH[e, i]
    return 0
}
function isip(s,    n, o, i) {
    if (s !~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/) return 0
    n = split(s, o, ".")
    for (i = 1; i <= n; i++) if (o[i] + 0 > 255) return 0
    return 1
}
function prefix(mask,    o, i, bits, b, done) {
    if (!isip(mask)) return -1
    split(mask, o, "."); bits = 0; done = 0
    for (i = 1; i <= 4; i++) {
        b = OCTBITS[o[i] + 0]
        if (b == "" || (done && b != 0)) return -1
        bits += b; if (b < 8) done = 1
    }
    return bits
}
function ishost(s) { return s ~ /^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$/ && length(s) <= 253 }
function err(msg) { print "ERROR " msg; errors++ }
function iface(e, who,    net, ip, mask, mac, mtu, p) {
    net = T[e]; ip = get(e, "ip"); mask = get(e, "netmask"); mac = tolower(get(e, "mac")); mtu = get(e, "mtu")
    if (mtu == "") mtu = 1500
    if (!isip(ip)) { err(who " " net ": bad ip \"" ip "\""); return }
    p = prefix(mask)
    if (p < 0) { err(who " " net ": bad netmask \"" mask "\""); return }
    if (mac !~ /^[0-9a-f][0-9a-f](:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])(:[0-9a-f][0-9a-f])$/) {
        err(who " " net ": bad mac \"" mac "\""); return
    }
    if (mtu !~ /^[0-9]+$/ || mtu + 0 < 68 || mtu + 0 > 65535) { err(who " " net ": bad mtu \"" mtu "\""); return }
    if (net !~ /^[A-Za-z_][-A-Za-z0-9_.]*$/) { err(who ": bad network name \"" net "\""); return }
    print "IFACE " net " " ip " " p " " mask " " mac " " mtu
    nif++
}
BEGIN {
    OCTBITS[255] = 8; OCTBITS[254] = 7; OCTBITS[252] = 6; OCTBITS[248] = 5
    OCTBITS[240] = 4; OCTBITS[224] = 3; OCTBITS[192] = 2; OCTBITS[128] = 1; OCTBITS[0] = 0
    depth = 0; n = 0; errors = 0; nif = 0
}
{
    line = $0
    sub(/^[ \t\r]+/, "", line); sub(/[ \t\r]+$/, "", line)
    if (line == "" || line ~ /^<\?/ || line ~ /^<!--/) next
    if (line ~ /^<\//) { if (depth > 0) depth--; next }
    if (!match(line, /^<[A-Za-z_][-A-Za-z0-9_.]*/)) next
    tag = substr(line, 2, RLENGTH - 1)
    rest = substr(line, RLENGTH + 1)
    gt = index(rest, ">")
    head = gt ? substr(rest, 1, gt - 1) : rest
    body = gt ? substr(rest, gt + 1) : ""
    e = ++n; T[e] = tag
    parent = depth > 0 ? STACK[depth] : 0
    P[e] = parent
    if (parent) { NCH[parent]++; CH[parent, NCH[parent]] = e }
    while (match(head, /[A-Za-z_][-A-Za-z0-9_.:]*="[^"]*"/)) {
        kv = substr(head, RSTART, RLENGTH); head = substr(head, RSTART + RLENGTH)
        eq = index(kv, "=")
        A[e, substr(kv, 1, eq - 1)] = unxml(substr(kv, eq + 2, length(kv) - eq - 2))
    }
    closing = "</" tag ">"
    if (head ~ /\/[ \t]*$/) next                     # <x .../>: no children
    c = index(body, closing)
    if (c) { X[e] = unxml(substr(body, 1, c - 1)); next }  # <key>text</key>
    depth++; STACK[depth] = e
}
END {
    if (n == 0 || T[1] != "vc") { err("not a vc-out file (no <vc> root)"); exit 1 }
    fe = child(1, "frontend"); cp = child(1, "compute")
    net = child(1, "network"); dns = net ? child(net, "dns") : 0; key = child(1, "key")
    if (!fe) err("no <frontend> element")
    if (!cp) err("no <compute> element")
    if (!fe || !cp) exit 1
    pub = child(fe, "public")
    if (has(cp, "count")) {
        # The cluster file: this node is the frontend.
        role = "frontend"
        if (has(fe, "name")) { name = get(fe, "name"); fqdn = get(fe, "fqdn"); gw = get(fe, "gw") }   # format 2
        else { name = get(pub, "name"); fqdn = get(pub, "fqdn"); gw = get(pub, "gw") }               # format 1
        for (i = 1; i <= NCH[fe]; i++) if (has(CH[fe, i], "ip")) iface(CH[fe, i], "frontend")
        priv = child(fe, "private")
        if (priv && isip(get(priv, "ip"))) print "HOST " name " " get(priv, "ip") " " name ".local " name
        if (pub && isip(get(pub, "ip")) && fqdn != "" && fqdn != name) print "HOST " fqdn " " get(pub, "ip") " " fqdn
        for (i = 1; i <= NCH[cp]; i++) {
            node = CH[cp, i]
            if (T[node] != "node") continue
            cname = get(node, "name")
            cip = has(node, "ip") ? get(node, "ip") : get(child(node, "private"), "ip")
            if (!ishost(cname)) { err("compute node " i ": bad name \"" cname "\""); continue }
            if (!isip(cip)) { err("compute " cname ": bad private ip \"" cip "\""); continue }
            print "HOST " cname " " cip " " cname ".local " cname
            print "PEER " cname " " cip
        }
    } else {
        # A compute file.
        role = "compute"
        priv = child(cp, "private")
        if (has(cp, "name")) { name = get(cp, "name"); gw = get(cp, "gw") }                         # format 2
        else { name = get(priv, "fqdn"); gw = get(priv, "gw") }                                     # format 1
        fqdn = has(fe, "fqdn") ? get(fe, "fqdn") : get(pub, "fqdn")
        for (i = 1; i <= NCH[cp]; i++) if (has(CH[cp, i], "ip")) iface(CH[cp, i], "compute")
        if (priv && isip(get(priv, "ip")) && ishost(name)) print "HOST " name " " get(priv, "ip") " " name ".local " name
        # The compute file does not carry the frontend private IP: pragma makes it the compute gateway.
        short = fqdn; sub(/\..*/, "", short)
        if (isip(gw) && ishost(short)) print "HOST " short " " gw " " short ".local " short (fqdn != short && ishost(fqdn) ? " " fqdn : "")
    }
    if (!ishost(name)) err(role ": bad or missing hostname \"" name "\"")
    print "ROLE " role
    if (ishost(name)) print "NAME " name
    if (fqdn != "" && ishost(fqdn)) print "FQDN " fqdn
    if (gw != "") { if (isip(gw)) print "GW " gw; else err(role ": bad gateway \"" gw "\"") }
    if (nif == 0) err(role " " name ": no interface with an ip in the file")
    ndns = split(get(dns, "ip"), servers, ",")
    for (i = 1; i <= ndns; i++) { if (isip(servers[i])) print "DNS " servers[i]; else err("bad dns server \"" servers[i] "\"") }
    search = get(dns, "search"); if (search != "" && ishost(search)) print "SEARCH " search
    k = X[key]; gsub(/[\r\n]+/, " ", k); sub(/^[ \t]+/, "", k); sub(/[ \t]+$/, "", k)
    if (k != "") print "KEY " k
    exit errors > 0
}'

say() { echo "$*"; }

run() {
    if [ "$DRYRUN" = 1 ]; then
        echo "RUN: $*"
    else
        "$@"
    fi
}

parse() {
    if [ ! -r "$VCOUT_FILE" ]; then
        echo "ERROR cannot read $VCOUT_FILE"
        return 1
    fi
    # One element per line even if the file is not pretty-printed.
    sed -e 's/>[[:space:]]*</>\n</g' "$VCOUT_FILE" | awk "$PARSER"
}

# The NIC whose MAC is $1 (lower case), from $NET_DIR/<dev>/address.
nic_by_mac() {
    for dir in "$NET_DIR"/*; do
        [ -r "$dir/address" ] || continue
        addr=$(tr 'A-F' 'a-f' < "$dir/address")
        if [ "$addr" = "$1" ]; then
            echo "${dir##*/}"
            return 0
        fi
    done
    return 1
}

load() {
    RECORDS=$(parse)
    status=$?
    ERRORS=0
    ROLE=""; NAME=""; FQDN=""; GW=""
    while read -r kind rest; do
        case "$kind" in
            ERROR) say "PRAGMA-ERROR: $rest"; ERRORS=$((ERRORS + 1)) ;;
            ROLE) ROLE=$rest ;;
            NAME) NAME=$rest ;;
            FQDN) FQDN=$rest ;;
            GW) GW=$rest ;;
        esac
    done <<EOF
$RECORDS
EOF
    if [ "$status" != 0 ] && [ "$ERRORS" = 0 ]; then
        say "PRAGMA-ERROR: cannot parse $VCOUT_FILE"
        ERRORS=1
    fi
}

records() {  # records KIND: the rest of each record of that kind
    echo "$RECORDS" | while read -r kind rest; do
        [ "$kind" = "$1" ] && echo "$rest"
    done
}

configure() {
    load
    if [ "$ERRORS" != 0 ] || [ -z "$NAME" ]; then
        # A file with any bad value changes nothing on the node.
        say "PRAGMA-FAILED name=${NAME:-unknown} role=${ROLE:-unknown} errors=$ERRORS"
        return 1
    fi
    mkdir -p "$ROOT/etc"
    run hostname "$NAME"
    echo "$NAME" > "$ROOT/etc/hostname"
    run ip link set dev lo up
    addresses=" "
    while read -r net ip prefix netmask mac mtu; do
        [ -n "$net" ] || continue
        dev=$(nic_by_mac "$mac")
        if [ -z "$dev" ]; then
            say "PRAGMA-ERROR: no network interface has MAC $mac (network $net, ip $ip)"
            ERRORS=$((ERRORS + 1))
            continue
        fi
        run ip link set dev "$dev" mtu "$mtu"
        run ip addr flush dev "$dev"
        run ip addr add "$ip/$prefix" dev "$dev"
        if ! run ip link set dev "$dev" up; then
            say "PRAGMA-ERROR: cannot bring up $dev"
            ERRORS=$((ERRORS + 1))
        fi
        addresses="$addresses$ip "
        say "PRAGMA-VCOUT: role=$ROLE name=$NAME net=$net iface=$dev mac=$mac ip=$ip/$prefix netmask=$netmask mtu=$mtu"
    done <<EOF
$(records IFACE)
EOF
    if [ -n "$GW" ]; then
        case "$addresses" in
            *" $GW "*) ;;   # the node is its own gateway: nothing to route through
            *) run ip route replace default via "$GW" || say "PRAGMA-ERROR: cannot route through gateway $GW" ;;
        esac
    fi
    {
        echo "127.0.0.1 localhost"
        records HOST | while read -r label line; do echo "$line"; done
    } > "$ROOT/etc/hosts"
    hosts=$(records HOST | while read -r label ip names; do printf '%s=%s ' "$ip" "$label"; done)
    say "PRAGMA-HOSTS: ${hosts% }"
    {
        records SEARCH | while read -r domain; do echo "search $domain"; done
        records DNS | while read -r server; do echo "nameserver $server"; done
    } > "$ROOT/etc/resolv.conf"
    key=$(records KEY)
    if [ -n "$key" ]; then
        mkdir -p "$ROOT/root/.ssh"
        chmod 700 "$ROOT/root/.ssh"
        echo "$key" > "$ROOT/root/.ssh/authorized_keys"
        chmod 600 "$ROOT/root/.ssh/authorized_keys"
        set -f  # the key is free text: no globbing when it is split into words
        set -- $key
        set +f
        say "PRAGMA-KEY: authorized $1 ${3:-}"
    else
        say "PRAGMA-ERROR: no <key> in $VCOUT_FILE"
        ERRORS=$((ERRORS + 1))
    fi
    if [ "$ERRORS" = 0 ]; then
        say "PRAGMA-READY name=$NAME role=$ROLE"
        return 0
    fi
    say "PRAGMA-FAILED name=$NAME role=$ROLE errors=$ERRORS"
    return 1
}

reach_once() {
    if [ "$DRYRUN" = 1 ]; then
        echo "RUN: ping -c 1 -W 1 $1"
        return 0
    fi
    ping -c 1 -W 1 "$1" > /dev/null 2>&1
}

reach() {
    [ -n "$ROLE" ] || load
    [ "$ROLE" = frontend ] || return 0
    pending=$(records PEER | tr '\n' ' ')
    ok=0; failed=0
    start=$(date +%s)
    while [ -n "${pending% }" ]; do
        next=""
        set -- $pending
        while [ $# -ge 2 ]; do
            if reach_once "$2"; then
                say "PRAGMA-REACH: $1 $2 ok"
                ok=$((ok + 1))
            else
                next="$next$1 $2 "
            fi
            shift 2
        done
        pending=$next
        [ -n "$pending" ] || break
        if [ $(( $(date +%s) - start )) -ge "$REACH_TIMEOUT" ]; then
            set -- $pending
            while [ $# -ge 2 ]; do
                say "PRAGMA-REACH: $1 $2 fail"
                failed=$((failed + 1))
                shift 2
            done
            break
        fi
        sleep 1
    done
    say "PRAGMA-REACH-DONE ok=$ok fail=$failed"
    [ "$failed" = 0 ]
}

case "${1:-all}" in
    configure) configure ;;
    reach) reach ;;
    parse) parse ;;
    all) configure; rc=$?; reach || rc=1; exit $rc ;;
    *) echo "usage: ${0##*/} [configure|reach|parse|all]" >&2; exit 2 ;;
esac
