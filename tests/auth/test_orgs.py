"""Organizations and projects on SQLite and PostgreSQL: default projects, names and ids."""

from __future__ import annotations

import pytest

from services.auth.orgs import DEFAULT_PROJECT
from services.auth.store import KeyStore
from services.common.errors import AlreadyExists, InvalidArgument, NotFound


async def test_create_org_makes_its_default_project(store: KeyStore) -> None:
    org = await store.orgs.create_org("acme")
    assert len(org.id) == 32 and org.name == "acme"
    (project,) = await store.orgs.list_projects("acme")
    assert project.id == org.default_project_id
    assert project.id.startswith("proj_") and len(project.id) == 5 + 16
    assert (project.name, project.is_default, project.org_id) == (DEFAULT_PROJECT, True, org.id)
    assert project.org_name == "acme"


async def test_create_org_twice_is_already_exists(store: KeyStore) -> None:
    await store.orgs.create_org("acme")
    with pytest.raises(AlreadyExists):
        await store.orgs.create_org(" acme ")
    with pytest.raises(InvalidArgument):
        await store.orgs.create_org("  ")


async def test_list_orgs_oldest_first_with_default_project(store: KeyStore) -> None:
    a = await store.orgs.create_org("acme")
    b = await store.orgs.create_org("globex")
    assert await store.orgs.list_orgs() == [a, b]


async def test_projects_by_org_name_or_id(store: KeyStore) -> None:
    org = await store.orgs.create_org("acme")
    web = await store.orgs.create_project("acme", "web")
    batch = await store.orgs.create_project(org.id, "batch")
    assert (web.org_id, batch.org_id) == (org.id, org.id)
    assert not web.is_default
    listed = await store.orgs.list_projects(org.id)
    assert [p.name for p in listed] == [DEFAULT_PROJECT, "web", "batch"]
    with pytest.raises(AlreadyExists):
        await store.orgs.create_project("acme", "web")
    with pytest.raises(NotFound):
        await store.orgs.create_project("nobody", "web")
    # The same project name in another organization is fine.
    await store.orgs.create_org("globex")
    other = await store.orgs.create_project("globex", "web")
    assert other.id != web.id
    assert len(await store.orgs.list_projects()) == 5
    assert await store.orgs.list_projects("nobody") == []


async def test_create_key_creates_org_with_default_project(store: KeyStore) -> None:
    info, _ = await store.create_key("acme", "web")
    (org,) = await store.orgs.list_orgs()
    assert org.name == "acme"
    assert info.project_id == org.default_project_id
    assert info.project_name == DEFAULT_PROJECT
    (project,) = await store.orgs.list_projects("acme")
    assert project.is_default


async def test_create_key_in_a_project_by_name_or_id(store: KeyStore) -> None:
    org = await store.orgs.create_org("acme")
    web = await store.orgs.create_project("acme", "web")
    by_name, _ = await store.create_key("acme", "a", project="web")
    by_id, _ = await store.create_key(org.id, "b", project=web.id)
    assert (by_name.project_id, by_name.project_name) == (web.id, "web")
    assert (by_id.project_id, by_id.org_id) == (web.id, org.id)
    assert [k.id for k in await store.list_keys("acme", "web")] == [by_name.id, by_id.id]
    assert [k.id for k in await store.list_keys(project=web.id)] == [by_name.id, by_id.id]
    assert await store.list_keys("acme", DEFAULT_PROJECT) == []


async def test_project_of_another_org_is_not_found(store: KeyStore) -> None:
    await store.orgs.create_org("acme")
    await store.orgs.create_org("globex")
    theirs = await store.orgs.create_project("globex", "web")
    for ref in (theirs.id, "web", "nope"):
        with pytest.raises(NotFound) as err:
            await store.create_key("acme", "k", project=ref)
        assert err.value.param == "project"
    assert await store.list_keys() == []
