"""Evidence reports: versioned JSON schema, Markdown and HTML with plots."""
