-- A conversation history as kvchat 0.1.0 (schema version 1, before kept
-- alternatives) wrote it: made with that version's app/store.py, dumped with
-- sqlite3's iterdump. tests/app/test_conversation_tree.py migrates it.
BEGIN TRANSACTION;
CREATE TABLE conversations (
            key TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            model_path TEXT NOT NULL,
            model_name TEXT NOT NULL,
            system_prompt TEXT NOT NULL,
            view_start INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted_at REAL
        );
INSERT INTO "conversations" VALUES('c0ffee01','Fruit facts','/models/SmolLM2-135M-Instruct-Q8_0.gguf','SmolLM2 135M Instruct','Be brief.',2,1764547200.0,1764547260.0,NULL);
INSERT INTO "conversations" VALUES('c0ffee02','Ünïcode 🍓 test','/models/qwen3-0.6b-q8_0.gguf','Qwen3 0.6B','',0,1764550000.0,1764550100.0,NULL);
CREATE TABLE messages (
            key TEXT PRIMARY KEY,
            conversation_key TEXT NOT NULL
                REFERENCES conversations (key) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('done', 'streaming', 'interrupted')),
            stats TEXT,
            tokens INTEGER,
            tokens_model TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
INSERT INTO "messages" VALUES('m01','c0ffee01',0,'user','Name three fruits.','done',NULL,7,'/models/SmolLM2-135M-Instruct-Q8_0.gguf',1764547200.0,1764547200.0);
INSERT INTO "messages" VALUES('m02','c0ffee01',1,'assistant','Apple, banana and cherry.','done','{"prompt_tokens": 30, "system_tokens": 12, "history_tokens": 0, "reused_tokens": 0, "evaluated_tokens": 30, "generated_tokens": 8, "time_to_first_token_s": 0.05, "prefill_tokens_per_s": 600.0, "decode_tokens_per_s": 80.0, "stop_reason": "eos", "template_notice": "", "restored_tokens": 0, "restored_from": "", "restore_seconds": 0.0, "decode_threads": 2, "threads_note": ""}',12,'/models/SmolLM2-135M-Instruct-Q8_0.gguf',1764547201.0,1764547205.0);
INSERT INTO "messages" VALUES('m03','c0ffee01',2,'user','Which is red?
```
code fence
```','done',NULL,NULL,'',1764547250.0,1764547250.0);
INSERT INTO "messages" VALUES('m04','c0ffee01',3,'assistant','The cherry (and some apples).','interrupted',NULL,NULL,'',1764547251.0,1764547260.0);
INSERT INTO "messages" VALUES('m05','c0ffee02',0,'user','Say 🍓 and ünïcode.','done',NULL,NULL,'',1764550000.0,1764550000.0);
INSERT INTO "messages" VALUES('m06','c0ffee02',1,'assistant','<think>
The person wants the emoji.
</think>

🍓 ünïcode','done',NULL,NULL,'',1764550001.0,1764550100.0);
CREATE INDEX conversations_by_activity ON conversations (updated_at);
CREATE UNIQUE INDEX messages_in_order ON messages (conversation_key, position);
COMMIT;
