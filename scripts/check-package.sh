#!/usr/bin/env bash
# Checks a pgcairn Debian package built by scripts/package.sh:
#   - its file list: the binary, a man page for the command and for every subcommand that
#     `pgcairn --help` lists, the three completion scripts, the systemd units, the conffile
#     (mode 0640) and the cron example;
#   - every man page renders (`man -l`), the bash completion parses (`bash -n`);
#   - as root: `dpkg -i` installs it, the installed binary names its commit, the conffile is
#     0640 root:postgres, `systemd-analyze verify` accepts every installed unit, and
#     `dpkg --purge` removes it all again.
#
#   ./scripts/check-package.sh target/debian/pgcairn_0.1.0-1_amd64.deb
set -euo pipefail
deb=${1:?usage: check-package.sh PATH.deb}
[[ -f "$deb" ]] || { echo "check-package: no such file: $deb" >&2; exit 1; }

fail() { printf 'check-package: FAILED: %s\n' "$*" >&2; exit 1; }
ok() { printf 'check-package: ok: %s\n' "$*" >&2; }

work=$(mktemp -d /tmp/pgcairn-check-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

listing=$work/listing
dpkg-deb -c "$deb" | awk '{ print $1, $6 }' | sed 's#^\(\S*\) \./#\1 /#' >"$listing"
has() { grep -q " $1\$" "$listing" || fail "package lacks $1"; }

dpkg-deb -x "$deb" "$work/root"
bin=$work/root/usr/bin/pgcairn
has /usr/bin/pgcairn
"$bin" --version | grep -Eq '^pgcairn [0-9]+\.[0-9]+\.[0-9]+ \((commit [0-9a-f]{7,}(-dirty)?|unknown commit)\)$' ||
    fail "--version does not name the build's commit: $("$bin" --version)"
ok "version: $("$bin" --version)"

# Every subcommand --help lists has a page, and no page is left over.
commands_of() { "$bin" "$@" --help | awk '/^Commands:/ { on = 1; next } on && /^$/ { on = 0 } on { print $1 }' | grep -vx help || true; }
subcommands=$(commands_of)
[[ -n "$subcommands" ]] || fail "no subcommands found in --help"
expected=("pgcairn")
declare -A shows=()   # page -> the command its synopsis must show
for s in $subcommands; do
    expected+=("pgcairn-$s"); shows[pgcairn-$s]="pgcairn $s"
    # Nested commands (pgcairn key add) have pages of their own.
    for n in $(commands_of "$s"); do expected+=("pgcairn-$s-$n"); shows[pgcairn-$s-$n]="pgcairn $s $n"; done
done
for page in "${expected[@]}"; do
    has "/usr/share/man/man1/$page.1.gz"
    rendered=$(MANWIDTH=100 man -l "$work/root/usr/share/man/man1/$page.1.gz" 2>&1) ||
        fail "man -l cannot render $page.1"
    grep -q "^NAME" <<<"$rendered" || fail "$page.1 has no NAME section"
    # Justified text may put two spaces between words: squeeze them. (Matched in bash, not
    # with `| grep -q`: grep exits at the first match and, under pipefail, the SIGPIPE tr
    # then gets on a long page failed the check at random.)
    squeezed=$(tr -s ' ' <<<"$rendered")
    [[ "$page" == pgcairn || "$squeezed" == *"${shows[$page]}"* ]] ||
        fail "$page.1 does not show '${shows[$page]}'"
done
pages=$(grep -c ' /usr/share/man/man1/.*\.1\.gz$' "$listing")
[[ "$pages" -eq "${#expected[@]}" ]] || fail "$pages man pages for ${#expected[@]} commands"
ok "${#expected[@]} man pages render"

has /usr/share/bash-completion/completions/pgcairn
has /usr/share/zsh/vendor-completions/_pgcairn
has /usr/share/fish/vendor_completions.d/pgcairn.fish
bash -n "$work/root/usr/share/bash-completion/completions/pgcairn" || fail "bash completion does not parse"
grep -q 'archive-push' "$work/root/usr/share/bash-completion/completions/pgcairn" ||
    fail "bash completion does not know archive-push"
ok "completions"

units=()
for u in backup drill gc verify; do
    for kind in service timer; do
        has "/lib/systemd/system/pgcairn-$u.$kind"
        units+=("pgcairn-$u.$kind")
    done
done
has /lib/systemd/system/pgcairn-metrics.service
units+=(pgcairn-metrics.service)
has /lib/systemd/system/pgcairn-wal-receive.service
units+=("pgcairn-wal-receive.service")
has /usr/share/doc/pgcairn/examples/pgcairn.cron
grep -q '^-rw-r----- /etc/pgcairn/pgcairn.toml$' "$listing" || fail "conffile is not mode 0640 in the package"
dpkg-deb -f "$deb" Package | grep -qx pgcairn || fail "package name is not pgcairn"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qx /etc/pgcairn/pgcairn.toml ||
    fail "/etc/pgcairn/pgcairn.toml is not a conffile"
ok "file list"

if [[ "$(id -u)" != 0 ]]; then
    ok "not root: install test skipped"
    exit 0
fi
if dpkg-query -W -f='${db:Status-Status}' pgcairn 2>/dev/null | grep -qx installed; then
    fail "pgcairn is already installed on this machine; refusing to replace it"
fi
dpkg -i "$deb" >/dev/null || fail "dpkg -i failed"
trap 'dpkg --purge pgcairn >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
/usr/bin/pgcairn --version >/dev/null || fail "installed binary does not run"
mode=$(stat -c '%a %U' /etc/pgcairn/pgcairn.toml)
[[ "$mode" == "640 root" ]] || fail "installed conffile is $mode, want 640 root"
if getent group postgres >/dev/null; then
    [[ "$(stat -c %G /etc/pgcairn/pgcairn.toml)" == postgres ]] || fail "conffile group is not postgres"
fi
if [[ -f /usr/share/man/man1/pgcairn-restore.1.gz ]]; then
    MANWIDTH=100 man pgcairn-restore >/dev/null 2>&1 || fail "man pgcairn-restore does not find the installed page"
else
    ok "man pages not installed here (dpkg path-exclude in /etc/dpkg/dpkg.cfg.d)"
fi
for u in "${units[@]}"; do
    [[ -f "/lib/systemd/system/$u" ]] || fail "$u not installed"
    # Not enabled: no symlink in any .wants directory.
    if compgen -G "/etc/systemd/system/*.wants/$u" >/dev/null; then fail "$u was enabled"; fi
done
verify_out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "${units[@]/#//lib/systemd/system/}" 2>&1) ||
    fail "systemd-analyze verify: $verify_out"
# Warnings about units that only a full system has (postgresql.service) are fine; anything
# naming our units' own lines is not.
if grep -E 'pgcairn-[a-z-]+\.(service|timer):[0-9]+' <<<"$verify_out"; then
    fail "systemd-analyze verify found problems in the units"
fi
ok "installed; units verify"
dpkg --purge pgcairn >/dev/null || fail "dpkg --purge failed"
[[ ! -e /usr/bin/pgcairn && ! -e /etc/pgcairn/pgcairn.toml && ! -e /lib/systemd/system/pgcairn-backup.service ]] ||
    fail "files left after dpkg --purge"
ok "purged"
