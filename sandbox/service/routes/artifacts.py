"""artifacts routes (issue 17): filled in by its own module owner."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
