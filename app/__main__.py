"""``python -m app``: serve the API with uvicorn on YOLOV1_HOST:YOLOV1_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from app.settings import Settings


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:  # fail fast, saying which setting is wrong
        sys.stderr.write(f"invalid configuration:\n{exc}\n")
        raise SystemExit(2) from exc
    from app.main import create_app
    from app.requestid import RequestIdFilter, uvicorn_log_config
    from app.slowclients import with_header_timeout

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(),
        http=with_header_timeout(settings.header_timeout_s),
    )


if __name__ == "__main__":
    main()
