"""One `sparkdl` logger, and quiet defaults for Spark, TensorFlow, Horovod and Petastorm."""
from __future__ import annotations

import logging
import os
import re

LOGGER_NAME = "sparkdl"
_NOISY = ("py4j", "pyspark", "petastorm", "horovod", "tensorflow", "absl", "matplotlib", "urllib3", "deltalake")


def get_logger(name: str | None = None) -> logging.Logger:
    """The `sparkdl` logger, or its child `sparkdl.<name>`."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name.removeprefix('sparkdl.')}")


def configure_logging(level: str | int | None = None, quiet_third_party: bool = True) -> None:
    """Send `sparkdl` log records to stderr at `level` (default: $SPARKDL_LOG_LEVEL or INFO).

    With `quiet_third_party`, TensorFlow's C++ logs and the Python loggers of Spark, Horovod and
    Petastorm are limited to warnings; set SPARKDL_THIRD_PARTY_LOG_LEVEL=INFO to see them.
    """
    level = level or os.environ.get("SPARKDL_LOG_LEVEL", "INFO")
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level if isinstance(level, int) else level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    if quiet_third_party:
        quiet_level = os.environ.get("SPARKDL_THIRD_PARTY_LOG_LEVEL", "WARNING").upper()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for name in _NOISY:
            logging.getLogger(name).setLevel(quiet_level)


# A name part `key`, `pat` or `sas` (`fs.azure.account.key.<account>.dfs.core.windows.net`, `DATABRICKS_PAT`,
# `fs.azure.sas.<container>...`), or any name with secret, password, token, credential or signature in it.
_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|signature|(^|[._-])(key|pat|sas)([._-]|$)|"
                         r"^fs\.s3a\..*key", re.IGNORECASE)
# `;name=value` parameters of a Spark Connect URL (`sc://host:15002/;token=...;user_id=...`) and URL user info
_URL_PARAM = re.compile(r";([^;=/\s]+)=([^;\s]*)")
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def looks_secret(key: str) -> bool:
    """True for setting names that usually hold secrets (`*secret*`, `*password*`, `*token*`, a `key`, `pat` or
    `sas` name part, `fs.s3a.*key*`): their values are never logged."""
    return bool(_SECRET_KEY.search(key))


def redact_url(text: str) -> str:
    """`text` with the secret-looking `;name=value` parameters of Spark Connect URLs (`;token=...`) and the user
    info of URLs (`user:password@`) replaced by `***`: for log lines and error messages that name an address."""
    text = _URL_PARAM.sub(lambda m: f";{m.group(1)}=***" if looks_secret(m.group(1)) else m.group(0), text)
    return _URL_USERINFO.sub("***@", text)


def shown(key: str, value: object) -> str:
    """A setting's value as it may appear in a log line: `***` for a key that looks secret."""
    return "***" if looks_secret(key) else str(value)
