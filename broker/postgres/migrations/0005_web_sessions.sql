-- Web sessions live in the database so that every broker replica sharing it
-- knows every signed-in browser (issue 25). id_hash is the hex SHA-256 of
-- the cookie value and token_hash that of the bearer token the session was
-- started with: neither the cookie nor the token is stored. Signing out
-- deletes the row, which every replica sees at once.
CREATE TABLE web_sessions (
	id_hash TEXT PRIMARY KEY,
	subject TEXT NOT NULL,
	user_json TEXT NOT NULL,
	token_hash TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);
CREATE INDEX web_sessions_subject ON web_sessions (subject);
