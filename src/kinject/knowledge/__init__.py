"""The knowledge base: reading documents (PDF, HTML, Word, text), stripping their furniture, cutting them into chunks."""
