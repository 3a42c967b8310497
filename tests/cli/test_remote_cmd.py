"""Remotes and certificate pins: URL parsing, `dits remote ...`, DITS_TOKEN, KnownHosts TOFU."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from dits.config import Config
from dits.errors import DitsError, UsageError
from dits.remotes import (
    EXIT_CERT_CHANGED,
    CertificateChangedError,
    KnownHosts,
    KnownHostsError,
    RemoteUrl,
    add_remote,
    get_remote,
    list_remotes,
    mask_token,
    normalize_fingerprint,
    parse_hostport,
    parse_url,
    remove_remote,
)
from dits.transport import CertificateMismatchError
from tests.conftest import DitsRunner

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
TOKEN = "s3cret-token-0123456789-wxyz"


# --- URL parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "repo", "canonical"),
    [
        ("dits://example.com/films", "example.com", 4433, "films", "dits://example.com:4433/films"),
        ("dits://Example.COM:9000/f", "example.com", 9000, "f", "dits://example.com:9000/f"),
        ("dits://127.0.0.1:4433/p", "127.0.0.1", 4433, "p", "dits://127.0.0.1:4433/p"),
        ("dits://localhost:1/a.b_c-d", "localhost", 1, "a.b_c-d", "dits://localhost:1/a.b_c-d"),
        ("dits://[::1]:4433/p", "::1", 4433, "p", "dits://[::1]:4433/p"),
        ("dits://[::1]/p", "::1", 4433, "p", "dits://[::1]:4433/p"),
        (
            "dits://[2001:DB8:0::1]:65535/r",
            "2001:db8::1",
            65535,
            "r",
            "dits://[2001:db8::1]:65535/r",
        ),
        ("dits://my-host/" + "x" * 100, "my-host", 4433, "x" * 100, None),
    ],
)
def test_parse_url_accepts(
    text: str, host: str, port: int, repo: str, canonical: str | None
) -> None:
    url = parse_url(text)
    assert url == RemoteUrl(host=host, port=port, repo=repo)
    assert str(url) == (canonical or f"dits://{host}:{port}/{repo}")
    assert parse_url(str(url)) == url


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com/films",
        "https://example.com/films",
        "DITS://example.com/films",
        "dits://example.com",
        "dits://example.com/",
        "dits:///films",
        "dits://:4433/films",
        "dits://example.com/films/",
        "dits://example.com/a/b",
        "dits://example.com/films?x=1",
        "dits://example.com/.hidden",
        "dits://example.com/-dash",
        "dits://example.com/" + "x" * 101,
        "dits://example.com:0/films",
        "dits://example.com:65536/films",
        "dits://example.com:/films",
        "dits://example.com:44x3/films",
        "dits://example.com:+443/films",
        "dits://ex_ample.com/films",
        "dits://-bad.com/films",
        "dits://user@example.com/films",
        "dits://::1/films",
        "dits://::1:4433/films",
        "dits://[::1/films",
        "dits://[not-v6]:4433/films",
        "dits://[127.0.0.1]:4433/films",
        "dits://999.1.1.1/films",
        "dits://exa mple.com/films",
    ],
)
def test_parse_url_rejects_with_one_line_naming_the_form(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_url(text)
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad remote URL")


def test_parse_url_bad_form_message_names_expected_form() -> None:
    with pytest.raises(UsageError, match=r"expected dits://HOST\[:PORT\]/REPO"):
        parse_url("http://x/y")
    with pytest.raises(UsageError, match="brackets"):
        parse_url("dits://::1/films")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host:1234", ("host", 1234)),
        ("HOST", ("host", 4433)),
        ("[::1]:9", ("::1", 9)),
        ("[::1]", ("::1", 4433)),
        ("dits://h:7/repo", ("h", 7)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


# --- remotes in the config ----------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(tmp_path / "config")


def test_add_get_remove_roundtrip(cfg: Config) -> None:
    spec = add_remote(cfg, "origin", "dits://Host:9/p", token="123")
    assert str(spec.url) == "dits://host:9/p" and spec.transport == "auto"
    reread = Config(cfg.path)
    got = get_remote(reread, None, env={})
    # A numeric-looking token stays a string (Config.set would parse it as TOML).
    assert got.token == "123" and got.token_source == "config"
    assert reread.get("remote.origin.url") == "dits://host:9/p"
    remove_remote(reread, "origin")
    assert "remote" not in Config(cfg.path).data


def test_token_is_not_in_repr(cfg: Config) -> None:
    spec = add_remote(cfg, "origin", "dits://h/p", token=TOKEN)
    assert TOKEN not in repr(spec)


def test_get_remote_defaults_and_unknown_names(cfg: Config) -> None:
    with pytest.raises(UsageError, match="none configured"):
        get_remote(cfg, None, env={})
    add_remote(cfg, "backup", "dits://b/p")
    assert get_remote(cfg, None, env={}).name == "backup"  # the only one
    add_remote(cfg, "mirror", "dits://m/p")
    with pytest.raises(UsageError, match="backup, mirror"):
        get_remote(cfg, None, env={})
    add_remote(cfg, "origin", "dits://o/p")
    assert get_remote(cfg, None, env={}).name == "origin"
    with pytest.raises(
        UsageError, match="no remote named 'nope'; configured: backup, mirror, origin"
    ):
        get_remote(cfg, "nope", env={})


def test_get_remote_accepts_a_url_without_config() -> None:
    spec = get_remote(None, "dits://[::1]:5/p", env={"DITS_TOKEN": "t"})
    assert spec.url.host == "::1" and spec.token == "t" and spec.transport == "auto"


def test_dits_token_overrides_config(cfg: Config) -> None:
    add_remote(cfg, "origin", "dits://h/p", token="from-config")
    assert get_remote(cfg, "origin", env={"DITS_TOKEN": "from-env"}).token == "from-env"
    assert get_remote(cfg, "origin", env={"DITS_TOKEN": "from-env"}).token_source == "env"
    assert get_remote(cfg, "origin", env={"DITS_TOKEN": ""}).token == "from-config"
    assert get_remote(cfg, "origin", env={}).token == "from-config"


def test_dits_token_from_process_environment(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    add_remote(cfg, "origin", "dits://h/p")
    assert get_remote(cfg).token is None
    monkeypatch.setenv("DITS_TOKEN", "env-token")
    assert get_remote(cfg).token == "env-token"


def test_transport_from_remote_then_core_then_auto(cfg: Config) -> None:
    add_remote(cfg, "a", "dits://h/a", transport="tcp")
    add_remote(cfg, "b", "dits://h/b")
    assert get_remote(cfg, "b", env={}).transport == "auto"
    cfg.set("core.transport", "quic")
    assert [s.transport for s in list_remotes(cfg, env={})] == ["tcp", "quic"]
    cfg.set("core.transport", "carrier-pigeon")
    with pytest.raises(UsageError, match=r"core\.transport"):
        get_remote(cfg, "b", env={})


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "a:b", "ü"])
def test_bad_remote_names(cfg: Config, name: str) -> None:
    with pytest.raises(UsageError, match="bad remote name"):
        add_remote(cfg, name, "dits://h/p")


def test_bad_url_in_config_names_the_key(cfg: Config) -> None:
    cfg.set("remote.origin.url", "http://nope")
    with pytest.raises(UsageError, match=r"^remote\.origin\.url: bad remote URL"):
        get_remote(cfg, "origin", env={})


def test_mask_token() -> None:
    assert mask_token(None) == "unset"
    assert mask_token("short") == "****"
    assert mask_token(TOKEN) == "****wxyz"


# --- the CLI ------------------------------------------------------------------------------------


def test_remote_add_list_remove_via_cli(dits: DitsRunner) -> None:
    assert dits("init")[0] == 0
    code, out, err = dits("remote", "add", "origin", "dits://Example.com/films", "--token", TOKEN)
    assert code == 0, err
    assert out.strip() == "Added remote origin dits://example.com:4433/films"
    assert dits("remote", "add", "backup", "dits://[::1]:9000/films")[0] == 0

    code, out, _ = dits("remote")
    assert out.split() == ["backup", "origin"]
    code, out, _ = dits("remote", "list")
    assert code == 0 and out.split() == ["backup", "origin"]

    code, out, _ = dits("remote", "list", "-v")
    assert code == 0 and TOKEN not in out
    lines = out.splitlines()
    assert lines[0].startswith("backup  dits://[::1]:9000/films  transport=auto  token=unset")
    assert "token=****wxyz (config)" in lines[1] and "cert=not pinned" in lines[1]

    code, out, _ = dits("remote", "list", "--json")
    assert code == 0 and TOKEN not in out
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["origin"]["token"] == "****wxyz" and rows["backup"]["token"] is None
    assert rows["backup"]["host"] == "::1" and rows["backup"]["port"] == 9000

    code, _, err = dits("remote", "add", "origin", "dits://other/films")
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = dits("remote", "add", "x", "http://nope")
    assert code == 2 and "dits://HOST[:PORT]/REPO" in err and err.count("\n") == 1

    code, out, _ = dits("remote", "remove", "origin")
    assert code == 0 and out.strip() == "Removed remote origin"
    code, _, err = dits("remote", "remove", "origin")
    assert code == 2 and "configured: backup" in err
    assert dits("remote", "rm", "backup")[0] == 0
    assert dits("remote", "list")[1] == ""


def test_remote_list_shows_env_token_masked(
    dits: DitsRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    dits("init")
    dits("remote", "add", "origin", "dits://h/p")
    monkeypatch.setenv("DITS_TOKEN", TOKEN)
    code, out, _ = dits("remote", "list", "-v")
    assert code == 0 and "token=****wxyz (env)" in out and TOKEN not in out


def test_remote_add_token_from_stdin(dits: DitsRunner) -> None:
    dits("init")
    code, _, err = dits("remote", "add", "origin", "dits://h/p", "--token", "-", input=TOKEN + "\n")
    assert code == 0, err
    assert Config(dits.cwd / ".dits" / "config").get("remote.origin.token") == TOKEN


def test_remote_outside_a_repository(dits: DitsRunner) -> None:
    code, _, err = dits("remote", "add", "origin", "dits://h/p")
    assert code == 3 and "not a dits repository" in err


def test_trust_and_forget_via_cli(dits: DitsRunner) -> None:
    # No repository needed: the pins are per user.
    code, out, err = dits("remote", "trust", "Host:4433", FP_A.upper())
    assert code == 0, err
    assert out.strip() == f"Pinned host:4433 to {FP_A}"
    code, out, _ = dits("remote", "trust", "host:4433", FP_B)
    assert out.strip() == f"Pinned host:4433 to {FP_B} (was {FP_A})"
    assert KnownHosts().entries() == {"host:4433": FP_B}
    code, _, err = dits("remote", "trust", "host:4433", "md5:abc")
    assert code == 2 and "sha256:<64 hex digits>" in err
    code, _, err = dits("remote", "trust", "::1", FP_A)
    assert code == 2 and "brackets" in err
    assert dits("remote", "forget", "host")[0] == 0
    code, _, err = dits("remote", "forget", "host:4433")
    assert code == 2 and "no certificate pinned for host:4433" in err


def test_remote_list_verbose_shows_pin(dits: DitsRunner) -> None:
    dits("init")
    dits("remote", "add", "origin", "dits://h:7/p")
    dits("remote", "trust", "h:7", FP_A)
    code, out, _ = dits("remote", "list", "--json")
    assert code == 0 and json.loads(out)[0]["fingerprint"] == FP_A


# --- known hosts --------------------------------------------------------------------------------


def test_known_hosts_default_path_honours_xdg(tmp_path: Path) -> None:
    assert KnownHosts().path == Path(os.environ["XDG_CONFIG_HOME"]) / "dits" / "known_hosts"
    env = {"HOME": str(tmp_path)}
    assert KnownHosts.default_path(env) == tmp_path / ".config" / "dits" / "known_hosts"
    env["XDG_CONFIG_HOME"] = "relative/ignored"
    assert KnownHosts.default_path(env) == tmp_path / ".config" / "dits" / "known_hosts"


def test_first_use_pins_then_match_passes(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "sub" / "known_hosts")
    assert kh.check("h", 4433, FP_A) is True
    assert kh.check("h", 4433, FP_A) is False
    assert kh.check("H", 4433, FP_A.upper()) is False
    assert kh.check("h", 4434, FP_B) is True  # the port is part of the identity
    assert kh.entries() == {"h:4433": FP_A, "h:4434": FP_B}
    assert stat.S_IMODE(kh.path.stat().st_mode) == 0o600
    lines = [ln for ln in kh.path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == [f"h:4433 {FP_A}", f"h:4434 {FP_B}"]
    assert not [p for p in kh.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_changed_certificate_raises_with_trust_command(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    kh.check("::1", 4433, FP_A)
    with pytest.raises(CertificateChangedError) as info:
        kh.check("::1", 4433, FP_B)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert FP_A in message and FP_B in message and "changed" in message
    assert message.endswith(f"dits remote trust [::1]:4433 {FP_B}")
    assert (err.old, err.new, err.exit_code) == (FP_A, FP_B, EXIT_CERT_CHANGED)
    assert isinstance(err, DitsError) and isinstance(err, CertificateMismatchError)
    assert not err.transient
    assert kh.entries() == {"[::1]:4433": FP_A}  # a mismatch never re-pins


def test_trust_replaces_and_forget_drops(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    assert kh.trust("h", 1, FP_A) is None
    assert kh.trust("h", 1, FP_B) == FP_A
    assert kh.check("h", 1, FP_B) is False
    assert kh.forget("h", 1) is True and kh.forget("h", 1) is False
    assert kh.check("h", 1, FP_A) is True
    assert stat.S_IMODE(kh.path.stat().st_mode) == 0o600


def test_verifier_hashes_the_der(tmp_path: Path) -> None:
    kh = KnownHosts(tmp_path / "known_hosts")
    pinned: list[str] = []
    verify = kh.verifier("h", 4433, on_pinned=pinned.append)
    der = b"0\x82not really a certificate"
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    verify(der)
    verify(der)
    assert pinned == [expected] and kh.get("h", 4433) == expected
    with pytest.raises(CertificateChangedError, match="dits remote trust h:4433 sha256:"):
        verify(b"another certificate")


def test_malformed_known_hosts_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\n\nh:1 {FP_A}\nh:2 sha256:zz\n")
    with pytest.raises(KnownHostsError, match=r"known_hosts:4: malformed line"):
        KnownHosts(path).check("h", 1, FP_A)


def test_normalize_fingerprint_accepts_colons_and_case() -> None:
    assert normalize_fingerprint("SHA256:" + ":".join(["AB"] * 32)) == "sha256:" + "ab" * 32
    assert normalize_fingerprint(f" {FP_A.upper()} ") == FP_A
    with pytest.raises(KnownHostsError):
        normalize_fingerprint("sha256:" + "a" * 63)


def test_concurrent_pins_all_land(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    errors: list[BaseException] = []

    def pin(i: int) -> None:
        try:
            KnownHosts(path).check(f"host{i}", 4433, "sha256:" + f"{i:02x}" * 32)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=pin, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(KnownHosts(path).entries()) == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_config_with_a_token_is_owner_only(dits: DitsRunner) -> None:
    assert dits("init")[0] == 0
    config = dits.cwd / ".dits" / "config"
    assert config.stat().st_mode & 0o777 == 0o644
    assert dits("remote", "add", "origin", "dits://h:1/r", "--token", "secret-token")[0] == 0
    assert config.stat().st_mode & 0o777 == 0o600
    assert dits("remote", "remove", "origin")[0] == 0
    assert config.stat().st_mode & 0o777 == 0o644
