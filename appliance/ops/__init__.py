"""Operations: backups and restore, the operator overview."""
