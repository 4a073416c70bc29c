from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tokenmall.servicekit import Service


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


ServiceDep = Annotated[Service, Depends(get_service)]
