"""Settings: flags over environment over TOML, validation, upstream DSNs."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import Settings, Upstream


def test_defaults(monkeypatch):
    for var in ("PGMP_LISTEN", "PGMP_UPSTREAM", "PGMP_CONFIG", "PGMP_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings.load([])
    assert s.listen == "127.0.0.1:6432"
    assert s.listen_host_port == ("127.0.0.1", 6432)
    assert s.upstream is None and s.upstream_target() is None
    assert s.log_level == "info"


def test_flag_beats_environment_beats_toml(monkeypatch, tmp_path: Path):
    toml = tmp_path / "pgmp.toml"
    toml.write_text('listen = "127.0.0.1:7000"\nlog_level = "error"\nmax_clients = 7\n')
    monkeypatch.setenv("PGMP_LOG_LEVEL", "warning")
    monkeypatch.setenv("PGMP_LISTEN", "127.0.0.1:7001")
    s = Settings.load(["--config", str(toml), "--listen", "0.0.0.0:7002"])
    assert s.listen == "0.0.0.0:7002"  # flag
    assert s.log_level == "warning"  # environment over file
    assert s.max_clients == 7  # file


def test_config_file_from_environment(monkeypatch, tmp_path: Path):
    toml = tmp_path / "pgmp.toml"
    toml.write_text('upstream = "postgresql://db.example:5433/?sslmode=require"\n')
    monkeypatch.setenv("PGMP_CONFIG", str(toml))
    target = Settings.load([]).upstream_target()
    assert target is not None
    assert (target.host, target.port, target.sslmode) == ("db.example", 5433, "require")


@pytest.mark.parametrize("listen", ["6432", "localhost", "host:port"])
def test_bad_listen_is_rejected(listen):
    with pytest.raises((ValidationError, SystemExit)):
        Settings.load(["--listen", listen])


def test_bad_upstream_scheme_is_rejected():
    with pytest.raises(ValidationError, match="postgresql://"):
        Settings.load(["--upstream", "mysql://db/"])


def test_unix_socket_upstream():
    target = Upstream.from_dsn("postgresql:///?host=/var/run/postgresql&port=5433")
    assert target.is_unix
    assert target.unix_path == "/var/run/postgresql/.s.PGSQL.5433"


def test_upstream_with_credentials_and_ca():
    target = Upstream.from_dsn(
        "postgresql://app:s%40cret@db:5432/appdb?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    )
    assert (target.user, target.password, target.database) == ("app", "s@cret", "appdb")
    assert target.sslmode == "verify-full" and target.sslrootcert == Path("/etc/ca.pem")
    assert "s@cret" not in target.describe()


def test_invalid_sslmode_is_rejected():
    with pytest.raises(ValidationError):
        Upstream.from_dsn("postgresql://db/?sslmode=sometimes")
