"""/api/v1/audit: the audit log (automl_server.audit_log), newest first, for admins."""
from __future__ import annotations

from sqlalchemy import select

from automl_server import audit_log
from automl_server.api.blueprint import api_blueprint, registry
from automl_server.api.pagination import newest_first_page
from automl_server.api.schemas import AUDIT_KINDS, AuditEventOut, AuditList, AuditQuery, one_of
from automl_server.db.models import AuditEvent
from automl_server.service_state import state


def to_out(row: AuditEvent) -> AuditEventOut:
    return AuditEventOut(
        id=row.id, created_at=row.created_at, kind=one_of(row.kind, AUDIT_KINDS), action=row.action,
        token_name=row.token_name, token_prefix=row.token_prefix, method=row.method, path=row.path,
        status=row.status, address=row.address, subject=row.subject, detail=row.detail,
    )


@registry.operation(
    api_blueprint, "/audit", "GET", scope="admin", summary="The audit log, newest first", tag="audit",
    query=AuditQuery, responses={200: AuditList},
)
def list_audit(query: AuditQuery) -> AuditList:
    """Token use (every API request that presented a token, refused ones
    included; repeated successful reads of one token, path and status within a
    minute are one row with action `requests` and their count in `detail`) and device changes (register, claim, re-register,
    register-refused, heartbeat-refused, retire)."""
    # The counts of repeated reads not yet written (audit_log's coalescing) go in first.
    audit_log.flush_coalesced(state().db)
    stmt = select(AuditEvent)
    if query.kind:
        stmt = stmt.where(AuditEvent.kind == query.kind)
    if query.device:
        stmt = stmt.where(AuditEvent.subject == query.device)
    with state().db.session() as session:
        rows, token = newest_first_page(session, stmt, AuditEvent, query.page_size, query.page_token)
        return AuditList(events=[to_out(r) for r in rows], next_page_token=token)
