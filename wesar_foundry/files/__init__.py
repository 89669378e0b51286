"""Writing and fetching files (imports the standard library only; Composer's object-store clients inside functions).

``atomic``: outputs appear whole or not at all (write in a sibling folder, then rename).
``remote``: object-store URIs (s3://, gs://, oci://, ...) through Composer's clients.
"""
