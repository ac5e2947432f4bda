"""What a downstream project adds to use pytest-pgtopo: load its schema into the template once."""

import pytest
from orders.models import Base
from sqlalchemy import MetaData


@pytest.fixture(scope="session")
def pgtopo_schema() -> MetaData:
    # Created once in the template database; every test gets a fresh clone of it.
    return Base.metadata
