"""The durable buffer: the database, the reading record, and the group commit.

``db`` opens the database and migrates it; ``records`` is the one record a reading has;
``commit`` is the transaction of a group commit and the writer process it runs in (standard
library only: that process imports nothing else); ``committer`` is the store as the gateway
sees it, made of ``group`` (queues verified packs, has them committed, acks them after their
commit), ``stages`` (the loop, and the stages after the commit), ``checkpoint`` (the WAL),
``readings`` (the readings table and its queries) and ``thread`` (the writer thread).
Imports nothing: the writer process imports ``gateway.store.commit`` alone.
"""
